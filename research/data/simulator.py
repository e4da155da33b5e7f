"""Persona and dialogue simulator with real, known persona signal.

Personas come from a few latent archetypes plus individual noise (style and
preferences). An assistant reply is planned from the query, the context and the
persona's preferences (`plan_actions`), then worded in the persona's style
(`render_reply`). Because planning and wording are separate, the same turn can be
re-worded with the population-average persona: that is the oracle headroom, the
most a method that knows the persona can gain over one that does not.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

from research.data.domain import DAYS_OF_WEEK, DEVICES, TIMES_OF_DAY, WEATHERS

NAMES = (
    "Ethan Maya Liam Sofia Noah Ava Lucas Chloe Mateo Zara Omar Priya Kenji Lena Felix Nora "
    "Diego Amara Hugo Ingrid Ravi Yuki Tomas Elif Kofi Mila Arjun Sienna Malik Freya Jonas Aiko "
    "Dante Leila Oscar Wren Idris Clara Theo Hana Bruno Esme Soren Tala Rafael Nia Emil Ines"
).split()

ARCHETYPES = {
    "cozy_homebody": dict(
        brightness=40,
        color="warm",
        temperature=23,
        speaker_volume=25,
        tv_volume=20,
        genre="jazz",
        verbosity=0.7,
        formality=0.4,
        enthusiasm=0.5,
        adjectives=("gentle", "warm-hearted", "easygoing"),
        occupations=("baker", "florist", "children's author"),
        hobbies=("loves knitting by the window", "bakes bread every weekend"),
    ),
    "energetic_athlete": dict(
        brightness=90,
        color="daylight",
        temperature=19,
        speaker_volume=70,
        tv_volume=35,
        genre="pop",
        verbosity=0.4,
        formality=0.2,
        enthusiasm=0.9,
        adjectives=("lively", "upbeat", "sporty"),
        occupations=("yoga instructor", "personal trainer", "cycling coach"),
        hobbies=("runs every morning before sunrise", "is always training for a marathon"),
    ),
    "quiet_scholar": dict(
        brightness=60,
        color="neutral",
        temperature=21,
        speaker_volume=15,
        tv_volume=15,
        genre="classical",
        verbosity=0.3,
        formality=0.9,
        enthusiasm=0.2,
        adjectives=("reserved", "thoughtful", "soft-spoken"),
        occupations=("librarian", "historian", "translator"),
        hobbies=("reads mystery novels late into the night", "collects old maps"),
    ),
    "busy_professional": dict(
        brightness=80,
        color="neutral",
        temperature=22,
        speaker_volume=40,
        tv_volume=30,
        genre="lofi",
        verbosity=0.1,
        formality=0.6,
        enthusiasm=0.3,
        adjectives=("pragmatic", "efficient", "no-nonsense"),
        occupations=("engineer", "lawyer", "project manager"),
        hobbies=("works long hours", "plans every minute of the week"),
    ),
    "night_owl_creative": dict(
        brightness=30,
        color="warm",
        temperature=20,
        speaker_volume=55,
        tv_volume=40,
        genre="rock",
        verbosity=0.6,
        formality=0.1,
        enthusiasm=0.7,
        adjectives=("playful", "dreamy", "spontaneous"),
        occupations=("musician", "illustrator", "game designer"),
        hobbies=("paints until dawn", "plays guitar in a garage band"),
    ),
}
ARCHETYPE_WEIGHTS = (0.25, 0.2, 0.2, 0.2, 0.15)

PET_PHRASES = (
    "if you would be so kind",
    "no rush",
    "cheers",
    "awesome",
    "thanks a bunch",
    "pretty please",
    "right away",
    "you're a star",
    "much obliged",
    "let's go",
)
STYLE_SENTENCES = {
    "terse": "speaks in short, clipped sentences.",
    "chatty": "likes to chat and explain things at length.",
    "formal": "is always polite and rather formal.",
    "casual": "keeps things casual and relaxed.",
}


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


@dataclass(frozen=True)
class Context:
    time_of_day: str
    weather: str
    temperature_c: float
    day_of_week: str

    @property
    def cold(self) -> bool:
        return self.temperature_c < 12 or self.weather in ("rainy", "snowy")

    @property
    def dark(self) -> bool:
        return self.time_of_day in ("evening", "night")


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


# --- user turns -------------------------------------------------------------

INTENTS = ("lights_on", "lights_set", "climate", "music", "tv", "movie", "goodnight", "lock", "cozy")
INTENT_WEIGHTS = (0.2, 0.1, 0.15, 0.12, 0.1, 0.08, 0.08, 0.07, 0.1)

USER_TEXT = {
    "lights_on": (
        "Could you turn on the lights?",
        "lights on",
        "Can you get the lights?",
        "It's quite dim in here, turn on the lamp.",
    ),
    "lights_set": ("Set the lights to {value} percent.", "lights at {value}%", "Could you dim the lights to {value}%?"),
    "climate": (
        "It's a bit {feel} in here.",
        "Turn on the AC.",
        "Can you fix the temperature? I'm {feel}.",
        "thermostat please",
    ),
    "music": ("Play some music.", "Put on some tunes.", "Could you start the music?"),
    "tv": ("Turn on the TV.", "tv on", "Could you switch on the television?"),
    "movie": ("Set up movie mode.", "movie time", "Get the room ready for a film."),
    "goodnight": ("Good night.", "I'm going to bed.", "night mode please"),
    "lock": ("Lock the front door.", "Is the door locked? Lock it.", "lock up"),
    "cozy": ("Make it cozy in here.", "I want the place cozy.", "cozy mode"),
}
FOLLOW_UP_PARAMETER = {
    "brighter": "brightness",
    "dimmer": "brightness",
    "warmer": "temperature",
    "louder": "volume",
    "quieter": "volume",
}
FOLLOW_UP_STEP = {"brighter": 20, "dimmer": -20, "warmer": 1, "louder": 10, "quieter": -10}
FOLLOW_UP_TEXT = {
    "brighter": "A bit brighter, please.",
    "dimmer": "Too bright, dim it.",
    "warmer": "Make it a little warmer.",
    "louder": "Turn it up.",
    "quieter": "Turn it down a bit.",
    "thanks": "Thanks!",
}


def user_text(rng: random.Random, persona: Persona, template: str, **slots) -> str:
    text = template.format(**slots)
    if persona.formality > 0.6 and not text.endswith(("?", "!")) and rng.random() < 0.5:
        text = "Please, " + (text if text.startswith("I") else text[0].lower() + text[1:])
    if rng.random() < 0.35:
        end = text[-1] if text[-1] in ".!?" else "."
        text = f"{text.rstrip('.!?')}, {persona.pet_phrase}{end}"
    return text


# --- planning: which devices and values a reply sets --------------------------

Action = tuple[str, str, str]  # (device, parameter, value)


def plan_actions(intent: str, persona: Persona, ctx: Context, slots: dict) -> list[Action]:
    """The actions this persona wants for this intent in this context."""
    dim = persona.evening_dim if ctx.dark else 0
    brightness = max(10, persona.brightness - dim)
    temperature = persona.temperature + (persona.cold_boost if ctx.cold else 0)
    mode = "heat" if ctx.temperature_c < 18 else "cool"
    if intent == "lights_on":
        return [("lights", "brightness", str(brightness)), ("lights", "color", persona.color)]
    if intent == "lights_set":
        return [("lights", "brightness", str(slots["value"])), ("lights", "color", persona.color)]
    if intent == "climate":
        return [("ac", "mode", mode), ("ac", "temperature", str(temperature))]
    if intent == "music":
        return [("speaker", "genre", persona.genre), ("speaker", "volume", str(persona.speaker_volume))]
    if intent == "tv":
        return [("tv", "volume", str(persona.tv_volume))]
    if intent == "movie":
        return [("lights", "brightness", str(max(10, brightness - 30))), ("tv", "volume", str(persona.tv_volume))]
    if intent == "goodnight":
        return [("lights", "brightness", "0"), ("lock", "state", "locked"), ("ac", "temperature", str(temperature - 1))]
    if intent == "lock":
        return [("lock", "state", "locked")]
    if intent == "cozy":
        return [
            ("lights", "brightness", str(max(10, brightness - 20))),
            ("lights", "color", "warm"),
            ("ac", "mode", "heat"),
            ("ac", "temperature", str(temperature + 1)),
        ]
    raise ValueError(f"unknown intent {intent!r}")


def follow_up(kind: str, previous: list[Action]) -> list[Action]:
    """The previous turn's setting changed by a relative request ('brighter', 'louder'...)."""
    for device, parameter, value in previous:
        if parameter == FOLLOW_UP_PARAMETER[kind]:
            low, high = DEVICES[device][parameter]
            return [(device, parameter, str(min(high, max(low, int(value) + FOLLOW_UP_STEP[kind]))))]
    raise ValueError(f"follow-up {kind!r} has nothing to change in {previous}")


# --- wording: the reply in the persona's style --------------------------------

PHRASES = {
    ("lights", "brightness"): ("the lights to {v}% brightness", "lights at {v}%", "the lights to {v} percent"),
    ("lights", "color"): ("a {v} color", "{v} light", "a {v} tone"),
    ("ac", "temperature"): ("the AC to {v} degrees", "the thermostat to {v}°C", "the temperature to {v} degrees"),
    ("ac", "mode"): ("the AC on {v} mode", "{v} mode on the air conditioner", "the AC to {v}"),
    ("speaker", "volume"): ("the speaker volume to {v}", "music at volume {v}", "the speaker to {v}%"),
    ("speaker", "genre"): ("some {v} music", "your {v} playlist", "{v} on the speaker"),
    ("tv", "volume"): ("the TV volume to {v}", "the TV at volume {v}", "the television to {v}"),
    ("lock", "state"): ("the front door {v}", "the door lock to {v}", "the door {v}"),
}
VERBS = ("Setting", "I've set", "Okay, setting", "Putting")
GREETINGS_FORMAL = ("Certainly.", "Of course.", "Very well.")
GREETINGS_CASUAL = ("Sure thing!", "You got it!", "On it!")
CLOSINGS = ("Let me know if you'd like anything else.", "Is there anything else you need?", "Enjoy your evening.")


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


# --- dialogues ------------------------------------------------------------------


def make_context(rng: random.Random, when: datetime) -> Context:
    hour = when.hour
    time_of_day = TIMES_OF_DAY[0 if 5 <= hour < 12 else 1 if 12 <= hour < 17 else 2 if 17 <= hour < 22 else 3]
    weather = rng.choices(WEATHERS, weights=(0.4, 0.3, 0.2, 0.1))[0]
    base = {"sunny": 22, "cloudy": 16, "rainy": 11, "snowy": -1}[weather]
    return Context(time_of_day, weather, round(base + rng.gauss(0, 4), 1), DAYS_OF_WEEK[when.weekday()])


def make_dialogue(rng: random.Random, persona: Persona, dialogue_id: str, when: datetime, alternates=()):
    """One dialogue as a schema row; `alternates` are (persona, rng) pairs that re-word
    every assistant turn (same actions planned from their own preferences)."""
    ctx = make_context(rng, when)
    intent = rng.choices(INTENTS, weights=INTENT_WEIGHTS)[0]
    slots = {"value": rng.randint(1, 10) * 10, "feel": "cold" if ctx.temperature_c < 18 else "warm"}
    turns, rewordings = [], [[] for _ in alternates]
    exchanges = [(intent, rng.choice(USER_TEXT[intent]))]
    if rng.random() < 0.6:
        # a follow-up that makes sense after this request: "brighter" only when lights were set
        first = {a[1] for a in plan_actions(intent, persona, ctx, slots)}
        options = [k for k, param in FOLLOW_UP_PARAMETER.items() if param in first] + ["thanks"]
        kind = rng.choice(options)
        exchanges.append((kind, FOLLOW_UP_TEXT[kind]))
    previous = {None: []}
    for step, (kind, template) in enumerate(exchanges):
        turns.append({"role": "user", "text": user_text(rng, persona, template, **slots), "devices": [], "actions": []})
        for who, (alt, alt_rng) in [(None, (persona, rng)), *enumerate(alternates)]:
            if step == 0:
                actions = plan_actions(kind, alt, ctx, slots)
            elif kind == "thanks":
                actions = []
            else:
                actions = follow_up(kind, previous[who])
            previous[who] = actions
            text = render_reply(alt_rng, alt, actions)
            if who is None:
                turns.append(
                    {
                        "role": "assistant",
                        "text": text,
                        "devices": sorted({a[0] for a in actions}),
                        "actions": [dict(device=d, parameter=p, value=v) for d, p, v in actions],
                    }
                )
            else:
                rewordings[who].append(text)
    row = dict(dialogue_id=dialogue_id, persona_id=persona.persona_id, timestamp=when, **asdict(ctx), turns=turns)
    return row, rewordings


def simulate(n_personas: int, n_dialogues: int, seed: int, archetype: str | None = None, id_prefix: str = "persona"):
    """Personas and their dialogues; also the re-worded assistant turns needed for the
    oracle headroom: (true preferences, population-average preferences) per turn."""
    rng = random.Random(seed)
    personas = [make_persona(rng, f"{id_prefix}_{i:03d}", archetype) for i in range(n_personas)]
    average = average_persona(personas)
    start = datetime(2025, 1, 6, 7, 0)
    dialogues, oracle, population = [], [], []
    for persona in personas:
        when = start + timedelta(hours=rng.randint(0, 48))
        for j in range(n_dialogues):
            when += timedelta(hours=rng.randint(6, 60))
            alternates = [(persona, random.Random(rng.random())), (average, random.Random(rng.random()))]
            row, (true_words, average_words) = make_dialogue(
                rng, persona, f"{persona.persona_id}_d{j:02d}", when, alternates
            )
            dialogues.append(row)
            oracle.append(true_words)
            population.append(average_words)
    return personas, dialogues, oracle, population
