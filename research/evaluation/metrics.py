"""The study's metrics, computed per assistant turn, then per persona, then overall.

Devices and (device, parameter, value) triples are read from free text the way
people phrase them: synonyms ("air conditioner", "lamp", "music volume"), numbers
in words ("twenty-two degrees"), units and relative words ("max", "half").

Precision of an empty prediction is 1 when the reference is empty too, else 0;
recall of an empty reference is 1 when the prediction is empty too, else 0.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from research.models.embedder import load_embedder

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
    "a/c": "ac",
    "sound system": "speaker",
    "front door": "door",
    "lo-fi": "lofi",
    "lo fi": "lofi",
    "warm white": "warm",
    "cool white": "neutral",
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
    "unlocked": ("state", "unlocked"),
    "unlock": ("state", "unlocked"),
    "unlocking": ("state", "unlocked"),
}
LEVEL_WORDS = {"max": 100, "maximum": 100, "full": 100, "half": 50, "off": 0}
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
CLAUSE_BOUNDARIES = {"and", ",", ".", ";", "!", "?", "then", "while"}
NUMERIC_BY_DEVICE = {"lights": "brightness", "ac": "temperature", "speaker": "volume", "tv": "volume"}


@dataclass
class Extraction:
    devices: set[str] = field(default_factory=set)
    triples: set[tuple[str, str, str]] = field(default_factory=set)
    numbers: list[int] = field(default_factory=list)


def _tokens(text: str) -> list[str]:
    text = text.lower()
    for phrase, token in PHRASES.items():
        text = text.replace(phrase, f" {token} ")
    words = re.findall(r"\d+(?:\.\d+)?|[a-z]+|[,.;!?]", text.replace("-", " "))
    merged: list[str | int] = []  # number words folded into one number: "twenty two" -> 22
    for word in words:
        value = UNITS.get(word, TENS.get(word))
        previous = merged[-1] if merged and isinstance(merged[-1], int) else None
        if word in UNITS and previous in TENS.values():
            merged[-1] = previous + value
        elif value is not None:
            merged.append(value)
        elif word == "hundred":
            merged[-1:] = [previous * 100] if previous else [*merged[-1:], 100]
        else:
            merged.append(word)
    return [str(w) for w in merged]


def extract(text: str) -> Extraction:
    """Devices, (device, parameter, value) triples and numbers mentioned in `text`."""
    tokens = _tokens(text)
    mentions = [(i, DEVICE_WORDS[t]) for i, t in enumerate(tokens) if t in DEVICE_WORDS]
    # "lock the door" / "lock up" is the action, "the lock" the device
    values: list[tuple[int, str, str]] = []  # (position, parameter or 'number', value)
    numbers: list[int] = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "lock" and following in ("the", "up", "it", "door"):
            values.append((i, "state", "locked"))
        elif token in CATEGORY_WORDS:
            values.append((i, *CATEGORY_WORDS[token]))
        elif re.fullmatch(r"\d+(?:\.\d+)?", token) or (token in LEVEL_WORDS and token != "off"):
            number = round(float(token)) if token[0].isdigit() else LEVEL_WORDS[token]
            numbers.append(number)
            kind = "temperature" if following in ("degrees", "degree", "c", "celsius") else "number"
            values.append((i, kind, str(number)))
        elif token == "off" and any(d == "lights" and abs(p - i) <= 3 for p, d in mentions):
            numbers.append(0)
            values.append((i, "brightness", "0"))

    boundaries = [i for i, t in enumerate(tokens) if t in CLAUSE_BOUNDARIES]

    def nearest(position: int, devices) -> str | None:
        # the device named in the same clause, just before the value ("the TV at 20 and lights to 10%")
        def cost(p: int) -> float:
            crossed = sum(min(p, position) < b < max(p, position) for b in boundaries)
            return abs(p - position) + (0.5 if p > position else 0) + 5 * crossed

        scored = [(cost(p), d) for p, d in mentions if d in devices]
        return min(scored)[1] if scored else None

    triples = set()
    for position, parameter, value in values:
        if parameter == "number":
            device = nearest(position, NUMERIC_BY_DEVICE)
            parameter = NUMERIC_BY_DEVICE.get(device)
        else:
            candidates = PARAMETER_DEVICES[parameter]
            device = nearest(position, candidates) or (candidates[0] if len(candidates) == 1 else None)
        if device:
            triples.add((device, parameter, value))
    devices = {d for _, d in mentions} | {t[0] for t in triples}
    return Extraction(devices, triples, numbers)


def _precision(predicted, reference) -> float:
    if not predicted:
        return 1.0 if not reference else 0.0
    if isinstance(predicted, list):
        matched = sum((Counter(predicted) & Counter(reference)).values())
    else:
        matched = len(predicted & reference)
    return matched / len(predicted)


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def structured_scores(reference: str, prediction: str) -> dict[str, float]:
    """Every metric but embedding similarity, for one turn."""
    ref, pred = extract(reference), extract(prediction)
    param_p, param_r = _precision(pred.triples, ref.triples), _precision(ref.triples, pred.triples)
    return {
        "device_precision": _precision(pred.devices, ref.devices),
        "device_recall": _precision(ref.devices, pred.devices),
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


def per_persona(turns: pl.DataFrame) -> pl.DataFrame:
    """Mean of each metric over a persona's turns (turns carries persona_id and METRICS)."""
    return turns.group_by("persona_id").agg(pl.col(m).mean() for m in METRICS).sort("persona_id")


def overall(personas: pl.DataFrame) -> dict[str, float]:
    """Mean over personas, so every persona weighs the same whatever its turn count."""
    return {m: float(personas[m].mean()) for m in METRICS}
