"""Training-data augmentation by rules: a dialogue's user turns reworded, the persona's
replies unchanged, so a per-persona adapter sees more ways of asking for the same thing.

The rules are plain English rewordings of smart-home requests, not the simulator's
templates, so they work on a user's own data in the schema (and no model is downloaded):
  synonyms     "turn on" -> "switch on", "lights" -> "lamps", "a bit" -> "a little", ...
  politeness   a framing around the request: "Please, ...", "Hey, ...", "..., thanks."
  numbers      digits as words and words as digits: "40%" -> "forty percent" -> "40 percent"
Each rule keeps what is asked, so the reply stays right. `vary_context` also redraws the
sensors' context (time of day, weather, temperature, weekday); because what a persona
prefers can depend on it, the unchanged reply may then be wrong for the new context: it
is an ablation, off by default.

Augmented dialogues are marked (`augmented: True`, id `<original>~aug<n>`) and made
from training dialogues only; val and test never hold one.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass

from research.data.domain import DAYS_OF_WEEK, TIMES_OF_DAY, WEATHERS

SYNONYMS = {
    "turn on": ["switch on", "put on"],
    "turn off": ["switch off", "shut off"],
    "switch on": ["turn on"],
    "switch off": ["turn off"],
    "lights": ["lamps", "lighting"],
    "light": ["lamp"],
    "a bit": ["a little", "slightly"],
    "a little": ["a bit", "slightly"],
    "music": ["tunes"],
    "tunes": ["music"],
    "increase": ["raise", "turn up"],
    "decrease": ["lower", "turn down"],
    "set the": ["change the", "adjust the"],
    "make it": ["get it"],
    "warmer": ["hotter"],
    "cooler": ["colder"],
    "quieter": ["softer"],
    "louder": ["higher"],
    "thanks": ["thank you", "cheers"],
    "thank you": ["thanks"],
    "could you": ["can you", "would you"],
    "can you": ["could you", "would you"],
    "i want": ["i'd like", "i would like"],
}
FRAMINGS = [("Please, ", ""), ("Hey, ", ""), ("", ", please."), ("", ", thanks."), ("Hi! ", ""), ("", " Thank you.")]
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
RULES = ("synonyms", "politeness", "numbers")
RULES_VERSION = 2  # bump when a rule or table changes: cached token data made with the old ones is stale


def number_as_words(n: int) -> str:
    if n < 20:
        return NUMBER_WORDS[n]
    if n == 100:
        return "one hundred"
    tens, ones = divmod(n, 10)
    return TENS[tens - 2] + (f"-{NUMBER_WORDS[ones]}" if ones else "")


WORDS_AS_NUMBERS = {number_as_words(n): n for n in range(101)}
_NUMBER_WORD_UNIT = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, WORDS_AS_NUMBERS), key=len, reverse=True)) + r") (percent|degrees)\b"
)
_SYNONYM = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)) + r")\b", re.I)


def _keep_case(original: str, replacement: str) -> str:
    return replacement[:1].upper() + replacement[1:] if original[:1].isupper() else replacement


def synonyms(text: str, rng: random.Random) -> str:
    """Each known phrase swapped, with probability 1/2, for one of its synonyms."""

    def swap(match: re.Match) -> str:
        phrase = match.group(0)
        if rng.random() < 0.5:
            return phrase
        return _keep_case(phrase, rng.choice(SYNONYMS[phrase.lower()]))

    return _SYNONYM.sub(swap, text)


def politeness(text: str, rng: random.Random) -> str:
    """The request inside a polite framing: a lead-in, or a closing that ends the sentence;
    a request that already says please or thanks is left as it is."""
    body = text.strip()
    if re.search(r"\b(please|thanks|thank you)\b", body, re.I):
        return body
    lead, closing = rng.choice(FRAMINGS)
    if lead.endswith(", ") and not re.match(r"(I\b|I'|[A-Z]{2})", body):  # "Please, turn..." not "Please, Turn"
        body = body[:1].lower() + body[1:]
    if closing.startswith(","):
        body = body.rstrip(".!?")
    return f"{lead}{body}{closing}"


def numbers(text: str, rng: random.Random) -> str:
    """Whole numbers 0-100 in digits written as words ("40%" -> "forty percent"), or numbers
    in words before a unit written as digits ("forty percent" -> "40 percent"). Decimals,
    larger numbers and words that are not amounts ("no one") stay as they are."""
    if re.search(r"(?<![\d.,])\d{1,3}(?!\d|[.,]\d)", text):

        def words(m: re.Match) -> str:
            n = int(m[1])
            return m[0] if n > 100 else number_as_words(n) + (" percent" if m[2] else "")

        return re.sub(r"(?<![\d.,])(\d{1,3})(?!\d|[.,]\d)(%?)", words, text)
    return _NUMBER_WORD_UNIT.sub(lambda m: f"{WORDS_AS_NUMBERS[m[1]]} {m[2]}", text)


REWRITES = {"synonyms": synonyms, "politeness": politeness, "numbers": numbers}


@dataclass(frozen=True)
class Augmentation:
    """Brings each persona's training dialogues up to `per_persona` by rewording copies of
    them (in turn, each original once before any twice)."""

    per_persona: int = 60  # training dialogues per persona after augmentation, originals included
    rules: tuple[str, ...] = RULES
    vary_context: bool = False  # ablation: the reply may no longer fit (module docstring)
    seed: int = 0

    def __post_init__(self) -> None:
        if unknown := [r for r in self.rules if r not in REWRITES]:
            raise ValueError(f"augmentation rule {unknown[0]!r} is unknown (known: {', '.join(RULES)})")

    def __call__(self, dialogues: list[dict]) -> list[dict]:
        """New dialogues for one persona's training `dialogues` (oldest first)."""
        extra = []
        for n in range(max(0, self.per_persona - len(dialogues))):
            original = dialogues[n % len(dialogues)]
            copy = n // len(dialogues) + 1
            rng = random.Random(f"{self.seed}|{original['dialogue_id']}|{copy}")
            extra.append(self.reworded(original, rng, copy))
        return extra

    def reworded(self, dialogue: dict, rng: random.Random, copy: int) -> dict:
        turns = []
        for turn in dialogue["turns"]:
            if turn["role"] == "user":
                text = turn["text"]
                for rule in self.rules:
                    text = REWRITES[rule](text, rng)
                turn = {**turn, "text": text}
            turns.append(turn)
        row = {**dialogue, "dialogue_id": f"{dialogue['dialogue_id']}~aug{copy}", "turns": turns, "augmented": True}
        if self.vary_context:
            row |= {
                "time_of_day": rng.choice(TIMES_OF_DAY),
                "weather": rng.choice(WEATHERS),
                "temperature_c": float(rng.randint(-5, 35)),
                "day_of_week": rng.choice(DAYS_OF_WEEK),
            }
        return row

    def fingerprint(self) -> str:
        return json.dumps({"augmentation": asdict(self), "rules_version": RULES_VERSION}, sort_keys=True)
