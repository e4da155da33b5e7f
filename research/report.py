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
            f"{result.method} ({result.run_id[:8]})", *(f"{result.metrics[f'{split}/{m}']:.3f}" for m in METRICS)
        )
    if headroom:
        for name in ("true_preferences", "population_average"):
            table.add_row(f"[dim]simulator: {name}[/dim]", *(f"[dim]{headroom[name][m]:.3f}[/dim]" for m in METRICS))
    Console(width=140).print(table)
