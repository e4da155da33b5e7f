"""Persona sampling: a latent archetype plus individual noise in style and preferences,
and the population-average persona the oracle headroom is measured against."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from research.data.domain import DEVICES
from research.data.simulator.tables import ARCHETYPE_WEIGHTS, ARCHETYPES, NAMES, PET_PHRASES, STYLE_SENTENCES


@dataclass(frozen=True)
class Persona:
    persona_id: str
    name: str
    description: str
    archetype: str
    verbosity: float
    formality: float
    enthusiasm: float
    pet_phrase: str
    brightness: int
    color: str
    temperature: int
    speaker_volume: int
    tv_volume: int
    genre: str
    evening_dim: int  # brightness dropped in the evening and at night
    cold_boost: int  # extra degrees on cold, rainy or snowy days

    def traits(self) -> dict:
        keys = ("archetype", "verbosity", "formality", "enthusiasm", "pet_phrase")
        return {k: getattr(self, k) for k in keys}

    def preferences(self) -> dict:
        keys = (
            "brightness",
            "color",
            "temperature",
            "speaker_volume",
            "tv_volume",
            "genre",
            "evening_dim",
            "cold_boost",
        )
        return {k: getattr(self, k) for k in keys}


def _clip(value: float, low: int, high: int, step: int = 1) -> int:
    return int(min(high, max(low, step * round(value / step))))


def _pick(rng: random.Random, preferred, pool, p: float):
    """`preferred` with probability p, otherwise anything from `pool`."""
    return preferred if rng.random() < p else rng.choice(pool)


def make_persona(rng: random.Random, persona_id: str, archetype: str | None = None) -> Persona:
    """A persona from an archetype (drawn when None) plus individual noise.

    archetype="neutral" draws every preference uniformly: the population used to
    pretrain the base model, which must learn the domain but no persona's taste.
    """
    if archetype is None:
        archetype = rng.choices(list(ARCHETYPES), weights=ARCHETYPE_WEIGHTS)[0]
    if archetype == "neutral":
        # words from any archetype; every preference uniform, so no population taste is learned
        a = dict(ARCHETYPES[rng.choice(list(ARCHETYPES))])
        a.update(
            brightness=rng.randint(1, 10) * 10,
            temperature=rng.randint(18, 25),
            speaker_volume=rng.randint(2, 16) * 5,
            tv_volume=rng.randint(2, 10) * 5,
            verbosity=rng.random(),
            formality=rng.random(),
            enthusiasm=rng.random(),
        )
        p_keep = 0.0
    else:
        a, p_keep = ARCHETYPES[archetype], 0.75
    name = rng.choice(NAMES)
    verbosity = min(1.0, max(0.0, a["verbosity"] + rng.gauss(0, 0.15)))
    formality = min(1.0, max(0.0, a["formality"] + rng.gauss(0, 0.15)))
    enthusiasm = min(1.0, max(0.0, a["enthusiasm"] + rng.gauss(0, 0.15)))
    # The description reflects the archetype only in part (noisy words), as in the study.
    adjective = _pick(rng, rng.choice(a["adjectives"]), [w for v in ARCHETYPES.values() for w in v["adjectives"]], 0.6)
    occupation = _pick(
        rng, rng.choice(a["occupations"]), [w for v in ARCHETYPES.values() for w in v["occupations"]], 0.6
    )
    hobby = _pick(rng, rng.choice(a["hobbies"]), [w for v in ARCHETYPES.values() for w in v["hobbies"]], 0.5)
    style = (
        "terse" if verbosity < 0.35 else "chatty" if verbosity > 0.65 else ("formal" if formality > 0.5 else "casual")
    )
    if rng.random() < 0.3:
        style = rng.choice(list(STYLE_SENTENCES))
    article = "an" if adjective[0] in "aeiou" else "a"
    description = f"{name} is {article} {adjective} {occupation} who {hobby}. {name} {STYLE_SENTENCES[style]}"
    return Persona(
        persona_id=persona_id,
        name=name,
        description=description,
        archetype=archetype,
        verbosity=round(verbosity, 3),
        formality=round(formality, 3),
        enthusiasm=round(enthusiasm, 3),
        pet_phrase=rng.choice(PET_PHRASES),
        brightness=_clip(a["brightness"] + rng.gauss(0, 12), 10, 100, 10),
        color=_pick(rng, a["color"], DEVICES["lights"]["color"], p_keep),
        temperature=_clip(a["temperature"] + rng.gauss(0, 1.2), 17, 27),
        speaker_volume=_clip(a["speaker_volume"] + rng.gauss(0, 8), 5, 90, 5),
        tv_volume=_clip(a["tv_volume"] + rng.gauss(0, 6), 5, 60, 5),
        genre=_pick(rng, a["genre"], DEVICES["speaker"]["genre"], p_keep),
        evening_dim=rng.choice((0, 0, 10, 20, 30)),
        cold_boost=rng.choice((0, 1, 1, 2)),
    )


def average_persona(personas: list[Persona]) -> Persona:
    """The population-average persona: mean numbers, most common categories, no name."""

    def mean(key, step=1):
        return _clip(sum(getattr(p, key) for p in personas) / len(personas), 0, 100, step)

    def mode(key):
        values = [getattr(p, key) for p in personas]
        return max(sorted(set(values)), key=values.count)

    return replace(
        personas[0],
        persona_id="average",
        name="",
        archetype="average",
        verbosity=sum(p.verbosity for p in personas) / len(personas),
        formality=sum(p.formality for p in personas) / len(personas),
        enthusiasm=sum(p.enthusiasm for p in personas) / len(personas),
        brightness=mean("brightness", 10),
        color=mode("color"),
        temperature=mean("temperature"),
        speaker_volume=mean("speaker_volume", 5),
        tv_volume=mean("tv_volume", 5),
        genre=mode("genre"),
        evening_dim=mean("evening_dim", 10),
        cold_boost=mean("cold_boost"),
    )


# Numeric preferences: (low, high, step) of the values a persona may hold
NUMERIC_PREFERENCES = {
    "brightness": (10, 100, 10),
    "temperature": (17, 27, 1),
    "speaker_volume": (5, 90, 5),
    "tv_volume": (5, 60, 5),
    "evening_dim": (0, 30, 10),
    "cold_boost": (0, 2, 1),
}


def with_signal(persona: Persona, average: Persona, signal: float, rng: random.Random) -> Persona:
    """`persona` with its deviation from the population average scaled by `signal`: 0 gives
    every persona the average's preferences (nothing to personalize), 1 leaves it as drawn,
    2 doubles each numeric deviation (clipped to the domain). A category (colour, genre)
    cannot deviate more than "not the average's": below 1 it is kept with probability
    `signal`, else the average's; at 1 and above it is kept. Style is left as drawn."""
    numbers = {
        key: _clip(getattr(average, key) + signal * (getattr(persona, key) - getattr(average, key)), *limits)
        for key, limits in NUMERIC_PREFERENCES.items()
    }
    categories = {key: _pick(rng, getattr(persona, key), [getattr(average, key)], signal) for key in ("color", "genre")}
    return replace(persona, **numbers, **categories)
