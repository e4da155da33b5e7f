"""Planning: the context of a dialogue and which devices and values a reply sets for
this persona's preferences, for a request or a relative follow-up ("brighter")."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from research.data.domain import DAYS_OF_WEEK, DEVICES, TIMES_OF_DAY, WEATHERS
from research.data.simulator.personas import Persona
from research.data.simulator.tables import FOLLOW_UP_PARAMETER, FOLLOW_UP_STEP


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


def make_context(rng: random.Random, when: datetime) -> Context:
    hour = when.hour
    time_of_day = TIMES_OF_DAY[0 if 5 <= hour < 12 else 1 if 12 <= hour < 17 else 2 if 17 <= hour < 22 else 3]
    weather = rng.choices(WEATHERS, weights=(0.4, 0.3, 0.2, 0.1))[0]
    base = {"sunny": 22, "cloudy": 16, "rainy": 11, "snowy": -1}[weather]
    return Context(time_of_day, weather, round(base + rng.gauss(0, 4), 1), DAYS_OF_WEEK[when.weekday()])


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
