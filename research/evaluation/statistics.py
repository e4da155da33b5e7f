"""Statistics of a method against a baseline, per persona, and the study's bar."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from research.config import UserInputError

# The study's bar for "a method beats unified" (../shared/seeds): on the per-persona scores,
# more than 60% of personas improved, a mean gain of at least 3 points, every persona above
# 0.70, and a paired test significant at 5% (Holm-adjusted when several methods are compared).
BAR = {"improved_share": 0.60, "mean_difference": 0.03, "min_persona": 0.70, "p_value": 0.05}
# The bar's parts that compare the method with unified. The fourth is an absolute floor: with
# a few test dialogues per persona, the worst persona's score is as much noise as method.
AGAINST_UNIFIED = ("improved_share", "mean_difference", "p_value")


class StatisticsError(UserInputError):
    """Per-persona tables that cannot be compared; the message says why."""


def compare(method_table, baseline_table, metric: str = "embedding_similarity", split: str = "test", seed: int = 0):
    """A method against a baseline (unified) on per-persona scores of `split`: share of
    personas improved, mean difference with a paired t-test and a bootstrap 95% CI, and
    the method's worst persona. Both sides must hold the same personas."""
    sides = {
        name: table.filter(pl.col("split") == split).select("persona_id", pl.col(metric).alias(name))
        for name, table in (("method", method_table), ("baseline", baseline_table))
    }
    personas = {name: set(side["persona_id"]) for name, side in sides.items()}
    if not personas["method"] or not personas["baseline"]:
        empty = [name for name, ids in personas.items() if not ids]
        raise StatisticsError(f"no {split} personas on the {' and '.join(empty)} side")
    if personas["method"] != personas["baseline"]:
        only = sorted(personas["method"] ^ personas["baseline"])
        raise StatisticsError(
            f"the sides hold different personas ({len(personas['method'])} in the method, "
            f"{len(personas['baseline'])} in the baseline; {len(only)} on one side only, e.g. {only[0]}): "
            "they were not evaluated on the same data"
        )
    joined = sides["method"].join(sides["baseline"], on="persona_id").sort("persona_id")  # fixed order: same bootstrap
    diff = (joined["method"] - joined["baseline"]).to_numpy()
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(10_000, len(diff)), replace=True).mean(axis=1)
    test = stats.ttest_rel(joined["method"].to_numpy(), joined["baseline"].to_numpy()) if len(diff) > 1 else None
    return {
        "personas": len(diff),
        "improved_share": float((diff > 0).mean()),
        "mean_difference": float(diff.mean()),
        "ci95_low": float(np.quantile(means, 0.025)),
        "ci95_high": float(np.quantile(means, 0.975)),
        "p_value": float(test.pvalue) if test is not None else float("nan"),
        "min_persona": float(joined["method"].min()),
        "baseline_mean": float(joined["baseline"].mean()),
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values from several tests against one baseline."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def verdict(result: dict, p_value: float, parts: tuple[str, ...] = tuple(BAR)) -> list[str]:
    """The parts of the study's bar (or of `parts` of it) a comparison misses (empty: it clears them)."""
    missed = []
    if "improved_share" in parts and not result["improved_share"] > BAR["improved_share"]:
        missed.append(f"improved {result['improved_share']:.0%} <= {BAR['improved_share']:.0%}")
    if "mean_difference" in parts and not result["mean_difference"] >= BAR["mean_difference"]:
        missed.append(f"mean {result['mean_difference']:+.3f} < +{BAR['mean_difference']:.2f}")
    if "min_persona" in parts and not result["min_persona"] > BAR["min_persona"]:
        missed.append(f"min persona {result['min_persona']:.3f} <= {BAR['min_persona']:.2f}")
    if "p_value" in parts and not p_value < BAR["p_value"]:
        missed.append(f"p {p_value:.3g} >= {BAR['p_value']}")
    return missed


def headroom_captured(result: dict, true_anchor: float | None) -> float | None:
    """The share of the gap between the baseline and the true-preferences anchor that the
    method closes (1: it replies as if it knew every preference; 0: no gain)."""
    if true_anchor is None or true_anchor <= result["baseline_mean"]:
        return None
    return result["mean_difference"] / (true_anchor - result["baseline_mean"])
