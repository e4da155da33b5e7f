"""Tables people read at the end of a job."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from research.metrics import METRICS

SHORT = {
    "embedding_similarity": "emb_sim",
    "device_precision": "dev_P",
    "device_recall": "dev_R",
    "param_precision": "par_P",
    "param_recall": "par_R",
    "param_f1": "par_F1",
    "numerical_precision": "num_P",
}


def _table(title: str) -> Table:
    table = Table(title=title)
    table.add_column("", no_wrap=True)
    for metric in METRICS:
        table.add_column(SHORT[metric], justify="right")
    return table


def print_headroom(headroom: dict) -> None:
    table = _table("Oracle headroom (test split): replying with true vs population-average preferences")
    for name in ("true_preferences", "population_average", "headroom"):
        table.add_row(
            name, *(f"{headroom[name][m]:+.3f}" if name == "headroom" else f"{headroom[name][m]:.3f}" for m in METRICS)
        )
    Console(width=140).print(table)


def print_results(results, split: str = "test", headroom: dict | None = None) -> None:
    table = _table(f"{split} metrics (mean over personas)")
    for result in results:
        table.add_row(
            f"{result.name} ({result.run_id[:8]})", *(f"{result.metrics[f'{split}/{m}']:.3f}" for m in METRICS)
        )
    if headroom:
        for name in ("true_preferences", "population_average"):
            table.add_row(f"[dim]simulator: {name}[/dim]", *(f"[dim]{headroom[name][m]:.3f}[/dim]" for m in METRICS))
    Console(width=140).print(table)


def compare(method_table, baseline_table, metric: str = "embedding_similarity", split: str = "test", seed: int = 0):
    """A method against a baseline (unified) on per-persona scores of `split`: share of
    personas improved, mean difference with a paired t-test and a bootstrap 95% CI, and
    the method's worst persona."""
    import numpy as np
    import polars as pl
    from scipy import stats

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


def print_comparison(rows: list[tuple[str, dict]], metric: str, split: str) -> None:
    table = Table(title=f"against unified: {split}/{metric}, per persona (study's bar: >60% improved, p < 0.05)")
    for column in ("method (run)", "improved", "mean diff", "95% CI", "p (paired t)", "min persona"):
        table.add_column(column, justify="right")
    for name, c in rows:
        table.add_row(
            name,
            f"{c['improved_share']:.0%}",
            f"{c['mean_difference']:+.4f}",
            f"[{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]",
            f"{c['p_value']:.3g}",
            f"{c['min_persona']:.3f}",
        )
    Console(width=140).print(table)
