"""Statistics of a method against a baseline, per persona."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats


def compare(method_table, baseline_table, metric: str = "embedding_similarity", split: str = "test", seed: int = 0):
    """A method against a baseline (unified) on per-persona scores of `split`: share of
    personas improved, mean difference with a paired t-test and a bootstrap 95% CI, and
    the method's worst persona."""
    joined = (
        method_table.filter(pl.col("split") == split)
        .select("persona_id", pl.col(metric).alias("method"))
        .join(
            baseline_table.filter(pl.col("split") == split).select("persona_id", pl.col(metric).alias("base")),
            on="persona_id",
        )
    )
    diff = (joined["method"] - joined["base"]).to_numpy()
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(10_000, len(diff)), replace=True).mean(axis=1)
    test = stats.ttest_rel(joined["method"].to_numpy(), joined["base"].to_numpy()) if len(diff) > 1 else None
    return {
        "personas": len(diff),
        "improved_share": float((diff > 0).mean()),
        "mean_difference": float(diff.mean()),
        "ci95_low": float(np.quantile(means, 0.025)),
        "ci95_high": float(np.quantile(means, 0.975)),
        "p_value": float(test.pvalue) if test is not None else float("nan"),
        "min_persona": float(joined["method"].min()),
    }
