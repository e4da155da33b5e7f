"""The study's metrics, computed per assistant turn, then per persona, then overall.

Devices and (device, parameter, value) triples are read from free text the way
people phrase them: synonyms ("air conditioner", "lamp", "music volume"), numbers in
words ("twenty-two degrees", "twenty one point five"), decimals (21.5 is not 22), units,
min/max words and superlatives ("max", "dimmest", "half"), and parameters named without
their device ("heat mode", "22 degrees"). Everyday words ("Cool!", "One moment.") and
times ("in 5 minutes") are not read as settings.

A turn whose reference sets nothing ("You're welcome!", 14% of turns) can only show a
mistake on these metrics, never a success: a prediction that sets something there scores 0
on precision and F1, and a silent one is not scored (None), so it counts for embedding
similarity only. Scoring silence there as perfect rewarded doing nothing and lifted every
method by the same share. Where the reference sets something, a silent prediction scores 0.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from research.data.domain import DEVICES, NUMERIC_PARAMETERS
from research.models.embedder import load_embedder

# bumped whenever a change moves scores: the simulator's anchors in a dataset's meta.json
# record the version they were scored with, and stale anchors are re-scored
METRICS_VERSION = 2
METRICS = (
    "embedding_similarity",
    "device_precision",
    "device_recall",
    "param_precision",
    "param_recall",
    "param_f1",
    "numerical_precision",
)

# multi-word phrases first, folded to one token so the scan below sees one word
PHRASES = {
    "air conditioner": "ac",
    "air conditioning": "ac",
    "air con": "ac",
    "a/c": "ac",
    "sound system": "speaker",
    "front door": "door",
    "lo-fi": "lofi",
    "lo fi": "lofi",
    "light jazz": "jazz",
    "warm white": "warmwhite",
    "daylight white": "daylight",
    "cool white": "neutral",
    "all the way up": "max",
    "all the way down": "min",
    "full blast": "max",
    "o'clock": "oclock",
    "°c": " degrees",
    "°": " degrees",
    "%": " percent",
    "per cent": "percent",
}
DEVICE_WORDS = {
    "lights": "lights",
    "light": "lights",
    "lamp": "lights",
    "lamps": "lights",
    "lighting": "lights",
    "bulb": "lights",
    "bulbs": "lights",
    "brightness": "lights",
    "ac": "ac",
    "aircon": "ac",
    "thermostat": "ac",
    "heating": "ac",
    "heater": "ac",
    "climate": "ac",
    "temperature": "ac",
    "speaker": "speaker",
    "speakers": "speaker",
    "music": "speaker",
    "playlist": "speaker",
    "song": "speaker",
    "songs": "speaker",
    "tunes": "speaker",
    "stereo": "speaker",
    "tv": "tv",
    "television": "tv",
    "telly": "tv",
    "lock": "lock",
    "locks": "lock",
    "door": "lock",
    "doors": "lock",
    "deadbolt": "lock",
}
# word -> (parameter, value); a parameter belongs to one device except volume
CATEGORY_WORDS = {
    "warm": ("color", "warm"),
    "warmwhite": ("color", "warm"),
    "neutral": ("color", "neutral"),
    "white": ("color", "neutral"),
    "daylight": ("color", "daylight"),
    "heat": ("mode", "heat"),
    "cool": ("mode", "cool"),
    "cooling": ("mode", "cool"),
    "eco": ("mode", "eco"),
    "jazz": ("genre", "jazz"),
    "classical": ("genre", "classical"),
    "rock": ("genre", "rock"),
    "pop": ("genre", "pop"),
    "lofi": ("genre", "lofi"),
    "locked": ("state", "locked"),
    "locking": ("state", "locked"),
    "secured": ("state", "locked"),
    "open": ("state", "unlocked"),
    "opened": ("state", "unlocked"),
    "unlocked": ("state", "unlocked"),
    "unlock": ("state", "unlocked"),
    "unlocking": ("state", "unlocked"),
}
# everyday words too ("Cool!", "it's warm in here", "rock on"): a setting only when their
# clause (or the one before it: "lights at 100% and warm") names the device or the
# parameter, or a setting word comes just before
EVERYDAY_WORDS = {"warm", "neutral", "white", "heat", "cool", "cooling", "eco", "rock", "pop", "open", "opened"}
PARAMETER_WORDS = {
    "mode": "mode",
    "color": "color",
    "colour": "color",
    "tone": "color",
    "hue": "color",
    "genre": "genre",
}
SETTING_WORDS = {"to", "on", "in", "at", "some", "play", "playing"}
# min/max words are the parameter's range bound (research.data.domain); the AC's "max" could
# mean the most cooling or the most heat, so levels are read for these devices only
LEVEL_WORDS = {
    "max": "max",
    "maximum": "max",
    "full": "max",
    "highest": "max",
    "brightest": "max",
    "loudest": "max",
    "min": "min",
    "minimum": "min",
    "lowest": "min",
    "dimmest": "min",
    "quietest": "min",
    "softest": "min",
    "half": "half",
    "quarter": "quarter",
}
LEVELS = {"max": 1.0, "min": 0.0, "half": 0.5, "quarter": 0.25}  # share of the parameter's range
LEVEL_DEVICES = ("lights", "speaker", "tv")
MUTE_WORDS = {"mute", "muted", "muting", "silence", "silent"}
DEGREE_WORDS = {"degrees", "degree", "c", "celsius"}
# numbers in a sentence about the weather are readings, not settings ("it's 8 degrees outside"),
# unless their clause names a device
WEATHER_WORDS = {"outside", "outdoors", "forecast"}
# a number followed by one of these is a time or a count, not a setting ("in 5 minutes", "at 7 pm")
NOT_SETTING_UNITS = {
    "minute",
    "minutes",
    "min",
    "mins",
    "hour",
    "hours",
    "second",
    "seconds",
    "sec",
    "secs",
    "pm",
    "am",
    "oclock",
    "day",
    "days",
    "times",
}
# "one" is a number only where a setting is being given ("volume to one"), else a pronoun
# or a phrase ("one moment", "the warm one")
ONE_CUES_BEFORE = {"to", "at", "by", "volume", "brightness", "temperature"}
ONE_CUES_AFTER = {"percent", "hundred", "point", *DEGREE_WORDS}
UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
PARAMETER_DEVICES = {
    "brightness": ("lights",),
    "color": ("lights",),
    "temperature": ("ac",),
    "mode": ("ac",),
    "volume": ("speaker", "tv"),
    "genre": ("speaker",),
    "state": ("lock",),
}
SENTENCE_ENDS = {".", ";", "!", "?"}
CLAUSE_BOUNDARIES = {"and", ",", "then", "while", "but", *SENTENCE_ENDS}
NUMERIC_BY_DEVICE = {"lights": "brightness", "ac": "temperature", "speaker": "volume", "tv": "volume"}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Extraction:
    devices: set[str] = field(default_factory=set)
    triples: set[tuple[str, str, str]] = field(default_factory=set)
    numbers: list[str] = field(default_factory=list)


def _number(value: float) -> str:
    """A value as written in a triple: 22, 21.5 (decimals kept: 21.5 degrees is not 22)."""
    return f"{value:g}"


def _tokens(text: str) -> list[str]:
    text = text.lower()
    for phrase, token in PHRASES.items():
        text = text.replace(phrase, f" {token} ")
    words = re.findall(r"\d+(?:\.\d+)?|[a-z]+|[,.;!?]", text.replace("-", " "))
    merged: list[str | float] = []  # number words folded into one number: "twenty two" -> 22
    for i, word in enumerate(words):
        before, after = words[i - 1] if i else "", words[i + 1] if i + 1 < len(words) else ""
        value = UNITS.get(word, TENS.get(word))
        previous = merged[-1] if merged and isinstance(merged[-1], float) else None
        cued = before in ONE_CUES_BEFORE or after in ONE_CUES_AFTER or previous in TENS.values()
        if word == "one" and not cued:
            value = None
        if value is not None and len(merged) > 1 and merged[-1] == "point" and isinstance(merged[-2], float):
            merged[-2:] = [merged[-2] + value / 10]  # "twenty one point five" -> 21.5
        elif word == "half" and len(merged) > 2 and merged[-2:] == ["and", "a"] and isinstance(merged[-3], float):
            merged[-3:] = [merged[-3] + 0.5]  # "nineteen and a half" -> 19.5
        elif word in UNITS and previous in TENS.values():
            merged[-1] = previous + value
        elif value is not None:
            merged.append(float(value))
        elif word == "hundred":
            merged[-1:] = [previous * 100] if previous else [*merged[-1:], 100.0]
        elif NUMBER.fullmatch(word):
            merged.append(float(word))
        else:
            merged.append(word)
    return [_number(w) if isinstance(w, float) else w for w in merged]


def extract(text: str) -> Extraction:
    """Devices, (device, parameter, value) triples and numbers mentioned in `text`.

    A value belongs to the nearest device named (crossing a clause or a sentence costs); a
    value whose parameter has one device needs no device named ("heat mode", "22 degrees").
    """
    tokens = _tokens(text)
    sentence, clause = [0], [0]  # each token's sentence and clause number
    for previous in tokens[:-1]:
        sentence.append(sentence[-1] + (previous in SENTENCE_ENDS))
        clause.append(clause[-1] + (previous in CLAUSE_BOUNDARIES))
    mentions = [(i, DEVICE_WORDS[t]) for i, t in enumerate(tokens) if t in DEVICE_WORDS]

    def clause_names(i: int, parameter: str) -> bool:
        return any(
            clause[i] - 1 <= clause[j] <= clause[i]
            and sentence[j] == sentence[i]
            and (DEVICE_WORDS.get(t) in PARAMETER_DEVICES[parameter] or PARAMETER_WORDS.get(t) == parameter)
            for j, t in enumerate(tokens)
        )

    weather = {sentence[i] for i, t in enumerate(tokens) if t in WEATHER_WORDS}
    named = {clause[p] for p, _ in mentions}

    def about_weather(i: int) -> bool:  # "7 degrees and sunny outside", not "... so the heating to 23"
        return sentence[i] in weather and clause[i] not in named

    values: list[tuple[int, str, str]] = []  # (position, parameter or a kind of number, value)
    numbers: list[str] = []
    for i, token in enumerate(tokens):
        before, after = tokens[i - 1] if i else "", tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "lock" and after in ("the", "up", "it", "door"):  # "lock the door" is the action
            values.append((i, "state", "locked"))
        elif token in CATEGORY_WORDS:
            parameter, value = CATEGORY_WORDS[token]
            if token not in EVERYDAY_WORDS or before in SETTING_WORDS or clause_names(i, parameter):
                values.append((i, parameter, value))
                if len(PARAMETER_DEVICES[parameter]) == 1:  # "warm at 40%": the lights are meant
                    mentions.append((i, PARAMETER_DEVICES[parameter][0]))
        elif NUMBER.fullmatch(token):
            # times ("half past 9"), counts, relative changes ("up by 5") and weather readings are not settings
            if after in NOT_SETTING_UNITS or before in ("by", "past") or about_weather(i):
                continue
            numbers.append(token)
            kind = "temperature" if after in DEGREE_WORDS else "number"
            values.append((i, kind, token))
        elif token in LEVEL_WORDS and not NUMBER.fullmatch(before):  # "5 min" is a time
            if token in ("half", "quarter") and after in ("an", "past", "to", "hour", "hours") and before != "to":
                continue  # "in half an hour", "quarter past nine": times, not levels
            values.append((i, "level", LEVEL_WORDS[token]))
        elif token in MUTE_WORDS:
            values.append((i, "volume", "0"))
        elif token == "off" and any(d == "lights" and abs(p - i) <= 3 for p, d in mentions):
            values.append((i, "brightness", "0"))

    def nearest(position: int, devices) -> str | None:
        # the device named in the same clause, just before the value ("the TV at 20 and lights to 10%")
        def cost(p: int) -> float:
            crossed = abs(clause[p] - clause[position]), abs(sentence[p] - sentence[position])
            return abs(p - position) + (0.5 if p > position else 0) + 5 * crossed[0] + 10 * crossed[1]

        scored = [(cost(p), d) for p, d in mentions if d in devices]
        return min(scored)[1] if scored else None

    triples = set()
    for position, parameter, value in values:
        if parameter == "number":
            device = nearest(position, NUMERIC_BY_DEVICE)
            parameter = NUMERIC_BY_DEVICE.get(device)
        elif parameter == "level":
            device = nearest(position, LEVEL_DEVICES)
            parameter = NUMERIC_BY_DEVICE.get(device)
            if device:
                low, high = DEVICES[device][parameter]
                value = _number(low + LEVELS[value] * (high - low))
                numbers.append(value)
        else:
            candidates = PARAMETER_DEVICES[parameter]
            device = nearest(position, candidates) or (candidates[0] if len(candidates) == 1 else None)
            if device and parameter in NUMERIC_PARAMETERS and not NUMBER.fullmatch(tokens[position]):
                numbers.append(value)  # "mute", "lights off": a number said in words
        if device:
            triples.add((device, parameter, value))
    devices = {d for _, d in mentions if d} | {t[0] for t in triples}
    return Extraction(devices, triples, numbers)


def _share_found(items, within) -> float:
    if isinstance(items, list):  # numbers: each said value counts once per time it is said
        return sum((Counter(items) & Counter(within)).values()) / len(items)
    return len(items & within) / len(items)


def _precision(predicted, reference) -> float | None:
    if not predicted:  # silence: not scored where nothing was due, wrong where something was
        return None if not reference else 0.0
    return _share_found(predicted, reference)


def _recall(predicted, reference) -> float | None:
    return _share_found(reference, predicted) if reference else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if recall is None:  # nothing was due: acting anyway scores 0, silence is not scored
        return None if precision is None else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def structured_scores(reference: str, prediction: str) -> dict[str, float | None]:
    """Every metric but embedding similarity, for one turn; None where the turn gives no evidence."""
    ref, pred = extract(reference), extract(prediction)
    param_p, param_r = _precision(pred.triples, ref.triples), _recall(pred.triples, ref.triples)
    return {
        "device_precision": _precision(pred.devices, ref.devices),
        "device_recall": _recall(pred.devices, ref.devices),
        "param_precision": param_p,
        "param_recall": param_r,
        "param_f1": _f1(param_p, param_r),
        "numerical_precision": _precision(pred.numbers, ref.numbers),
    }


def embedding_similarity(references: list[str], predictions: list[str], embedder: str | None = None) -> np.ndarray:
    model = load_embedder(embedder or "")
    unique = sorted(set(references) | set(predictions))
    vectors = model.encode(unique, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    index = {text: i for i, text in enumerate(unique)}
    ref = vectors[[index[t] for t in references]]
    pred = vectors[[index[t] for t in predictions]]
    return np.clip((ref * pred).sum(axis=1), -1.0, 1.0)


def score_turns(references: list[str], predictions: list[str], embedder: str | None = None) -> pl.DataFrame:
    """One row of metrics per (reference, prediction) pair."""
    rows = [structured_scores(r, p) for r, p in zip(references, predictions, strict=True)]
    frame = pl.DataFrame(rows, schema=dict.fromkeys(METRICS[1:], pl.Float64))
    similarity = embedding_similarity(references, predictions, embedder) if references else []
    return frame.with_columns(embedding_similarity=pl.Series(similarity, dtype=pl.Float64)).select(METRICS)


def parameter_recall(references: list[str], predictions: list[str]) -> dict[str, float]:
    """For each device parameter ("lights.brightness"), the share of reference settings of it
    that the prediction sets to the same value, over all turns: which parameters a model gets
    right, e.g. whether a model told the preferences copies each of them."""
    due, hit = Counter(), Counter()
    for reference, prediction in zip(references, predictions, strict=True):
        predicted = extract(prediction).triples
        for triple in extract(reference).triples:
            due[triple[:2]] += 1
            hit[triple[:2]] += triple in predicted
    return {f"{device}.{parameter}": hit[device, parameter] / n for (device, parameter), n in sorted(due.items())}


def per_persona(turns: pl.DataFrame) -> pl.DataFrame:
    """Mean of each metric over a persona's turns (turns carries persona_id and METRICS)."""
    return turns.group_by("persona_id").agg(pl.col(m).mean() for m in METRICS).sort("persona_id")


def overall(personas: pl.DataFrame) -> dict[str, float]:
    """Mean over personas, so every persona weighs the same whatever its turn count."""
    return {m: float(personas[m].mean()) for m in METRICS}
