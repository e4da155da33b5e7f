"""Tables people read at the end of a job (rich, to the terminal)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from research.evaluation.metrics import METRICS

SHORT = {
    "embedding_similarity": "emb_sim",
    "device_precision": "dev_P",
    "device_recall": "dev_R",
    "param_precision": "par_P",
    "param_recall": "par_R",
    "param_f1": "par_F1",
    "numerical_precision": "num_P",
}


def _console() -> Console:
    """The terminal's width, or 80 columns when the output is a log file."""
    return Console()


def _table(title: str) -> Table:
    """A row name, then a column per metric. Metrics never wrap; a long run name wraps (and a
    word longer than its column folds), so in 80 columns every figure still reads whole. No
    vertical rules: the name keeps their width."""
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
    table.add_column("", overflow="fold", min_width=16)
    for metric in METRICS:
        table.add_column(SHORT[metric], justify="right", no_wrap=True)
    return table


def print_headroom(headroom: dict) -> None:
    table = _table("Oracle headroom (test split): replying with true vs population-average preferences")
    for name in ("true_preferences", "population_average", "headroom"):
        table.add_row(
            name, *(f"{headroom[name][m]:+.3f}" if name == "headroom" else f"{headroom[name][m]:.3f}" for m in METRICS)
        )
    _console().print(table)


def print_results(results, split: str = "test", headroom: dict | None = None) -> None:
    table = _table(f"{split} metrics (mean over personas)")
    for result in results:
        table.add_row(
            f"{result.name} ({result.run_id[:8]})", *(f"{result.metrics[f'{split}/{m}']:.3f}" for m in METRICS)
        )
    if headroom:
        for name in ("true_preferences", "population_average"):
            table.add_row(f"[dim]simulator: {name}[/dim]", *(f"[dim]{headroom[name][m]:.3f}[/dim]" for m in METRICS))
    _console().print(table)


def print_parameter_recall(results, split: str = "test", headroom: dict | None = None) -> None:
    """Per parameter, the share of reference settings each run got right: where a model
    told the preferences fails to copy, this shows which parameter it is."""
    prefix = f"{split}/param_recall/"
    parameters = sorted({k.removeprefix(prefix) for r in results for k in r.metrics if k.startswith(prefix)})
    average = (headroom or {}).get("population_average", {})
    table = Table(title=f"{split}: share of each parameter's reference settings got right (pooled over turns)")
    table.add_column("parameter", no_wrap=True)
    for result in results:  # in a narrow log a long run name folds onto lines, never cut to "unified_…"
        table.add_column(result.name, justify="right", overflow="fold")
    if average:
        table.add_column("[dim]simulator: population_average[/dim]", justify="right", overflow="fold")
    for parameter in parameters:
        cells = [f"{r.metrics[prefix + parameter]:.0%}" if prefix + parameter in r.metrics else "-" for r in results]
        if average:
            value = average.get(f"param_recall/{parameter}")
            cells.append("[dim]-[/dim]" if value is None else f"[dim]{value:.0%}[/dim]")
        table.add_row(parameter, *cells)
    _console().print(table)


def print_probe(results: dict[str, dict[str, float]], base: str) -> None:
    """The copy probe (research/evaluation/probe.py): per parameter, told the resolved
    settings (reading alone), told the raw preferences, told nothing."""
    oracles = list(results)
    table = Table(title=f"copy probe of {base}: {results[oracles[0]]['turns']} held-out neutral requests, zero-shot")
    table.add_column("")
    for oracle in oracles:
        table.add_column(f"told {oracle}", justify="right")
    for key in ["param_f1", *sorted(k for k in results[oracles[0]] if k.startswith("param_recall/"))]:
        table.add_row(key.removeprefix("param_recall/"), *(f"{results[o].get(key, float('nan')):.2f}" for o in oracles))
    _console().print(table)


def print_comparison(rows: list[tuple[str, dict]], metric: str, split: str) -> None:
    table = Table(
        title=f"against unified: {split}/{metric}, per persona; the study's bar: >60% improved, mean >= +0.03, "
        "min persona > 0.70, p < 0.05 (Holm-adjusted over the rows)"
    )
    columns = ("method (run)", "personas", "improved", "mean diff", "95% CI", "p (paired t)", "p (Holm)")
    for column in (*columns, "min persona", "headroom", "verdict"):
        table.add_column(column, justify="right")
    for name, c in rows:
        headroom = "-" if c["headroom_captured"] is None else f"{c['headroom_captured']:.0%}"
        table.add_row(
            name,
            str(c["personas"]),
            f"{c['improved_share']:.0%}",
            f"{c['mean_difference']:+.4f}",
            f"[{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]",
            f"{c['p_value']:.3g}",
            f"{c['p_holm']:.3g}",
            f"{c['min_persona']:.3f}",
            headroom,
            "[green]clears the bar[/green]" if not c["missed"] else "misses: " + "; ".join(c["missed"]),
        )
    Console(width=200).print(table)
    print("headroom: the share of the gap between unified and the true-preferences anchor the method closes")
