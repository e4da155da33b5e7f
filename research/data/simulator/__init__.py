"""Persona and dialogue simulator with real, known persona signal.

Personas come from a few latent archetypes plus individual noise (style and
preferences: `personas`). An assistant reply is planned from the query, the context
and the persona's preferences (`planning`), then worded in the persona's style
(`wording`); `dialogues` puts turns together. Because planning and wording are
separate, the same turn can be re-worded with the population-average persona: that
is the oracle headroom, the most a method that knows the persona can gain over one
that does not. Every draw comes from one seeded generator, in a fixed order, so a
seed gives the same dataset bit for bit.
"""

from research.data.simulator.dialogues import simulate
from research.data.simulator.tables import INTENT_WEIGHTS, INTENTS, NAMES, PET_PHRASES

__all__ = ["INTENTS", "INTENT_WEIGHTS", "NAMES", "PET_PHRASES", "simulate"]
