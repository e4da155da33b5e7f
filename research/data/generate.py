"""`research data generate`: the persona dataset, the neutral pretraining population,
and the oracle headroom printed and saved in meta.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from research.config import FRACTION, SEED, VAL_FRACTION
from research.data.schema import DIALOGUE_SCHEMA, PERSONA_SCHEMA, assign_splits, fingerprint, write_dataset
from research.data.simulator import INTENT_WEIGHTS, INTENTS, NAMES, PET_PHRASES, simulate

# persona_id, reference, prediction -> metric -> mean over personas (the evaluation layer's
# scorer, passed in: data sits below evaluation)
Scorer = Callable[[pl.DataFrame], dict[str, float]]


@dataclass
class SimulatorConfig:
    personas: int = field(default=200, metadata={"min": 1})
    # per persona; the headroom is scored on test dialogues, so each persona needs one
    dialogues: int = field(
        default=30,
        metadata={"min": 1, "check": (lambda v, c: v * c.test_fraction >= 1, "dialogues x test_fraction at least 1")},
    )
    seed: int = field(default=0, metadata=SEED)
    # each persona's deviation from the population average: 0 none, 1 as drawn, 2 doubled
    # (research/data/simulator/personas.py with_signal); the crossover map's second axis
    signal: float = field(default=1.0, metadata={"min": 0})
    # Disjoint population for pretraining the base model: many speakers with few dialogues
    # each, so stated settings vary more (measured with the base's p_preferences 0.5 -> 0.8:
    # told the true preferences, unified_lora param F1 0.518 with 300 x 30, 0.705 with 900 x 10)
    neutral_personas: int = field(default=900, metadata={"min": 1})
    neutral_dialogues: int = field(default=10, metadata={"min": 1})
    # how often the neutral population asks for each of INTENTS (lights_on, lights_set, climate,
    # music, tv, movie, goodnight, lock, cozy): the base's pretraining mix; personas keep theirs
    neutral_intent_weights: tuple[float, ...] = field(
        default=INTENT_WEIGHTS,
        metadata={"length": len(INTENTS), "min": 0, "check": (lambda v, _: sum(v) > 0, "not all 0")},
    )
    # only to score the headroom on the test split
    val_fraction: float = field(default=1 / 6, metadata=VAL_FRACTION)
    test_fraction: float = field(default=1 / 6, metadata=FRACTION)


# What a prompt tells the assistant about the user (research/datamodules/prompts.py).
PROMPT_NOTE = {
    "system_turn": "context (time of day, weather, temperature, weekday) and the user's name",
    "user_name": "in the system turn by default (data.user_name=true), as a real assistant knows its account "
    "holder; the simulator's replies address the user by name in about half of the turns. Datasets made "
    "before this note had prompts without the name.",
    "oracle": "data.oracle=preferences adds the persona's raw preferences, data.oracle=resolved the settings "
    "each dialogue's replies make (the instrument's two rows)",
}


def _frames(personas, dialogues) -> tuple[pl.DataFrame, pl.DataFrame]:
    persona_rows = [
        {
            "persona_id": p.persona_id,
            "name": p.name,
            "description": p.description,
            "traits": json.dumps(p.traits(), sort_keys=True),
            "preferences": json.dumps(p.preferences(), sort_keys=True),
        }
        for p in personas
    ]
    return pl.DataFrame(persona_rows, schema=PERSONA_SCHEMA), pl.DataFrame(dialogues, schema=DIALOGUE_SCHEMA)


def vocabulary_lines() -> list[str]:
    """Every name and pet phrase in a sentence, so the base model has seen them all."""
    return [f"Of course, {name}. Thanks, {name}!" for name in NAMES] + [f"Sure, {p}. Okay, {p}!" for p in PET_PHRASES]


def oracle_headroom(dialogues: pl.DataFrame, oracle: dict, population: dict, score: Scorer) -> dict:
    """Scores on the test split of replying with the persona's true preferences versus the
    population-average ones (both re-worded, so phrasing noise is in both)."""
    test = dialogues.filter(pl.col("split") == "test")
    rows = []
    for row in test.iter_rows(named=True):
        references = [t["text"] for t in row["turns"] if t["role"] == "assistant"]
        for turn, reference in enumerate(references):
            rows.append(
                {
                    "persona_id": row["persona_id"],
                    "reference": reference,
                    "oracle": oracle[row["dialogue_id"]][turn],
                    "average": population[row["dialogue_id"]][turn],
                }
            )
    frame = pl.DataFrame(rows)
    result = {}
    for name, column in (("true_preferences", "oracle"), ("population_average", "average")):
        predictions = frame.select("persona_id", "reference", pl.col(column).alias("prediction"))
        result[name] = score(predictions)
    result["headroom"] = {
        m: result["true_preferences"][m] - result["population_average"][m] for m in result["true_preferences"]
    }
    return result


def generate(cfg: SimulatorConfig, out: str | Path, score: Scorer, metrics_version: int, neutral: bool = True) -> dict:
    """Write OUT/personas (with the oracle headroom, scored by `score`, in meta.json) and, when
    `neutral`, OUT/neutral (the base's pretraining population)."""
    out = Path(out)
    personas, dialogues, oracle, population = simulate(cfg.personas, cfg.dialogues, cfg.seed, signal=cfg.signal)
    persona_df, dialogue_df = _frames(personas, dialogues)
    ids = dialogue_df["dialogue_id"].to_list()
    headroom = oracle_headroom(
        assign_splits(dialogue_df, cfg.val_fraction, cfg.test_fraction),
        dict(zip(ids, oracle, strict=True)),
        dict(zip(ids, population, strict=True)),
        score,
    )
    headroom["metrics_version"] = metrics_version
    write_dataset(
        out / "personas",
        persona_df,
        dialogue_df,
        {"simulator": asdict(cfg), "oracle_headroom": headroom, "prompt": PROMPT_NOTE},
    )
    if neutral:
        population_neutral = simulate(
            cfg.neutral_personas,
            cfg.neutral_dialogues,
            cfg.seed + 1_000_003,
            "neutral",
            "neutral",
            intent_weights=tuple(cfg.neutral_intent_weights),
        )
        write_dataset(
            out / "neutral", *_frames(*population_neutral[:2]), {"simulator": asdict(cfg), "population": "neutral"}
        )
    return {"fingerprint": fingerprint(out / "personas"), "oracle_headroom": headroom}
