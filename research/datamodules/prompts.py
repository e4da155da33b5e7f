"""What the assistant is told: the system turn of every prompt, from a context provider.

A context provider turns a dialogue, the assistant turn being answered and what is
known of the user into the system-turn text. The datamodule applies it when it builds
training examples and evaluation prompts, and keys its token cache by the provider's
`fingerprint`, so a method that puts something of its own into prompts (retrieved
history, a description) gets it in training and evaluation alike.

The pieces, in the order they appear:
  Context: evening, rainy, 11°C, Monday.        always: what the house's sensors know
  User: Maya.                                   the account holder's name (`user_name`)
  About the user: Maya is a gentle baker ...    the persona's description (`description`)
  User preferences: brightness 80, ...          the oracle ablation (`preferences`)
  Earlier: lights on => Lights at 40%. | ...    the user's own past exchanges (`history`)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Protocol


def context_line(dialogue: dict) -> str:
    return (
        f"Context: {dialogue['time_of_day']}, {dialogue['weather']}, "
        f"{dialogue['temperature_c']:.0f}°C, {dialogue['day_of_week']}."
    )


def preferences_line(preferences: str | dict) -> str:
    prefs = json.loads(preferences) if isinstance(preferences, str) else preferences
    return "User preferences: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(prefs.items())) + "."


def history_line(exchanges: list[tuple[str, str]]) -> str:
    """(user text, assistant reply) pairs, oldest first."""
    return "Earlier: " + " | ".join(f"{user} => {reply}" for user, reply in exchanges)


def system_text(
    dialogue: dict,
    name: str | None = None,
    preferences: str | dict | None = None,
    history: list[tuple[str, str]] = (),
    description: str | None = None,
) -> str:
    parts = [context_line(dialogue)]
    if name:
        parts.append(f"User: {name}.")
    if description:
        parts.append(f"About the user: {description}")
    if preferences is not None:
        parts.append(preferences_line(preferences))
    if history:
        parts.append(history_line(list(history)))
    return " ".join(parts)


def conversation(dialogue: dict, system: str) -> list[dict]:
    return [{"role": "system", "content": system}] + [
        {"role": t["role"], "content": t["text"]} for t in dialogue["turns"]
    ]


class ContextProvider(Protocol):
    """The system-turn text of `dialogue` for the prompt of its assistant turn `turn`
    (0-based among assistant turns; None: the whole dialogue, as trained on). `user` is
    the persona's row (persona_id, name, description, preferences)."""

    def system(self, dialogue: dict, user: dict, turn: int | None) -> str: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ProfileContext:
    """The default provider: sensors' context, the user's name, and (ablation) their
    preferences; the same for every turn of a dialogue."""

    user_name: bool = True
    preferences: bool = False
    description: bool = False  # the persona's description (prefix_static)

    def system(self, dialogue: dict, user: dict, turn: int | None = None) -> str:
        if self.preferences and user.get("preferences") is None:
            raise ValueError(f"persona {user.get('persona_id')} has no preferences for data.oracle_preferences")
        return system_text(
            dialogue,
            name=user.get("name") if self.user_name else None,
            preferences=user.get("preferences") if self.preferences else None,
            description=user.get("description") if self.description else None,
        )

    def fingerprint(self) -> str:
        # without the description field when it is off, so earlier caches keep their keys
        settings = {k: v for k, v in asdict(self).items() if k != "description" or v}
        return fingerprint_of(type(self).__name__, settings)

    def spec(self) -> dict:
        """What serving needs to build the same prompts (an adapter's manifest keeps it)."""
        return {"provider": "profile", **asdict(self)}


def context_from_spec(spec: dict) -> ContextProvider:
    settings = dict(spec)
    if (provider := settings.pop("provider", None)) != "profile":
        raise ValueError(f"unknown context provider {provider!r} (known: profile)")
    return ProfileContext(**settings)


def fingerprint_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
