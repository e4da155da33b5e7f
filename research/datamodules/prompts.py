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
  User preferences: brightness 80, ...          the raw-preferences instrument (`oracle="preferences"`)
  Settings: lights brightness 60, ...           the resolved-values instrument (`oracle="resolved"`)
  Earlier: lights on => Lights at 40%. | ...    the user's own past exchanges (`history`)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Protocol

from research.config import Oracle
from research.data.schema import DataError


def context_line(dialogue: dict) -> str:
    return (
        f"Context: {dialogue['time_of_day']}, {dialogue['weather']}, "
        f"{dialogue['temperature_c']:.0f}°C, {dialogue['day_of_week']}."
    )


def preferences_line(preferences: str | dict) -> str:
    prefs = json.loads(preferences) if isinstance(preferences, str) else preferences
    return "User preferences: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(prefs.items())) + "."


def settings_line(turns: list[dict]) -> str:
    """The settings each assistant turn of a dialogue makes, in turn order: 'Settings: lights
    brightness 60, lights color warm; then lights brightness 80.' These are the values the
    simulator's planner resolved for the dialogue's context and requests (evening dimming,
    cold boost, a movie's -30, a follow-up's +20 ...), so copying them is always right."""
    made = [
        ", ".join(f"{a['device']} {a['parameter']} {a['value']}" for a in turn["actions"])
        for turn in turns
        if turn["role"] == "assistant" and turn["actions"]
    ]
    return "Settings: " + "; then ".join(made) + "." if made else "Settings: none."


def history_line(exchanges: list[tuple[str, str]]) -> str:
    """(user text, assistant reply) pairs, oldest first."""
    return "Earlier: " + " | ".join(f"{user} => {reply}" for user, reply in exchanges)


def system_text(
    dialogue: dict,
    name: str | None = None,
    preferences: str | dict | None = None,
    history: list[tuple[str, str]] = (),
    description: str | None = None,
    resolved: bool = False,
) -> str:
    """The system turn; `resolved` states the settings `dialogue`'s replies make (settings_line)."""
    parts = [context_line(dialogue)]
    if name:
        parts.append(f"User: {name}.")
    if description:
        parts.append(f"About the user: {description}")
    if preferences is not None:
        parts.append(preferences_line(preferences))
    if resolved:
        parts.append(settings_line(dialogue["turns"]))
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
    """The default provider: sensors' context, the user's name and, for the instrument, an
    oracle (`oracle`): the persona's raw preferences, or the settings the dialogue's replies
    make (resolved values: a perfect reader scores 1.0). The same for every turn of a dialogue."""

    user_name: bool = True
    oracle: Oracle = "none"
    description: bool = False  # the persona's description (prefix_static)

    def system(self, dialogue: dict, user: dict, turn: int | None = None) -> str:
        if self.oracle == "preferences" and user.get("preferences") is None:
            raise DataError(f"persona {user.get('persona_id')} has no preferences for data.oracle=preferences")
        if self.oracle == "resolved" and not any(t["role"] == "assistant" for t in dialogue["turns"]):
            raise DataError(
                f"dialogue {dialogue.get('dialogue_id', '(a request)')} has no recorded replies to resolve "
                "settings from: data.oracle=resolved is for evaluation on a dataset, not for serving"
            )
        return system_text(
            dialogue,
            name=user.get("name") if self.user_name else None,
            preferences=user.get("preferences") if self.oracle == "preferences" else None,
            description=user.get("description") if self.description else None,
            resolved=self.oracle == "resolved",
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
