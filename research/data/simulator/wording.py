"""Wording: a user's request and the assistant's reply in the persona's style."""

from __future__ import annotations

import random

from research.data.simulator.personas import Persona
from research.data.simulator.planning import Action
from research.data.simulator.tables import CLOSINGS, GREETINGS_CASUAL, GREETINGS_FORMAL, PHRASES, VERBS


def user_text(rng: random.Random, persona: Persona, template: str, **slots) -> str:
    text = template.format(**slots)
    if persona.formality > 0.6 and not text.endswith(("?", "!")) and rng.random() < 0.5:
        text = "Please, " + (text if text.startswith("I") else text[0].lower() + text[1:])
    if rng.random() < 0.35:
        end = text[-1] if text[-1] in ".!?" else "."
        text = f"{text.rstrip('.!?')}, {persona.pet_phrase}{end}"
    return text


def render_reply(rng: random.Random, persona: Persona, actions: list[Action]) -> str:
    """Word `actions` the way this persona likes to be answered."""
    if not actions:
        thanks = "You're very welcome" if persona.formality > 0.5 else "Anytime"
        return f"{thanks}, {persona.name}!" if persona.name and rng.random() < 0.6 else f"{thanks}!"
    if persona.verbosity < 0.3:
        return ", ".join(rng.choice(PHRASES[a[:2]][1:2]).format(v=a[2]) for a in actions).capitalize() + "."
    parts = [rng.choice(PHRASES[a[:2]]).format(v=a[2]) for a in actions]
    body = f"{rng.choice(VERBS)} {' and '.join(parts)}"
    body += "!" if persona.enthusiasm > 0.7 else "."
    greeting = rng.choice(GREETINGS_FORMAL if persona.formality > 0.5 else GREETINGS_CASUAL)
    if persona.name and rng.random() < 0.5:
        greeting = greeting[:-1] + f", {persona.name}" + greeting[-1]
    reply = f"{greeting} {body}"
    if persona.verbosity > 0.6:
        reply += " " + rng.choice(CLOSINGS)
    return reply
