"""The main job (`make run`) and the instrument check (`research instrument`).

The main job: data if missing, base model if missing, then no_adaptation, unified_lora
and the instrument (below) trained, evaluated on test, logged to MLflow and printed in
one table next to the simulator's anchors.

The instrument: a comparison of methods means something only if the base model uses
what its prompt says. `unified_lora` with the persona's true preferences written in
every prompt (train and test) is that check: it must come close to the simulator's
true-preferences anchor. Its MLflow run is tagged `instrument=told_preferences`, so
reports can show it as the reference row.
"""

from __future__ import annotations

import json
from pathlib import Path

from research.data.generate import SimulatorConfig
from research.evaluation.metrics import METRICS_VERSION
from research.models.base import BaseConfig, pretrain_from_dataset
from research.recipes.data import generate_dataset
from research.recipes.experiment import load_config
from research.recipes.tables import print_parameter_recall, print_results
from research.recipes.train import train_and_evaluate

INSTRUMENT_TAG = {"instrument": "told_preferences"}
# the told model must reach this share of the true-preferences anchor on these metrics
INSTRUMENT_BAR = 0.9
INSTRUMENT_METRICS = ("param_f1", "numerical_precision")


def ensure_data_and_base(cfg) -> None:
    """Generate the dataset and pretrain the base model when they are missing; re-score the
    simulator's anchors when they were scored with other metrics."""
    data_dir, base_dir = Path(cfg.data.dir), Path(cfg.base_model)
    if not (data_dir / "meta.json").exists():
        print(f"generating the persona dataset into {data_dir.parent}")
        generate_dataset(SimulatorConfig(), data_dir.parent)
    meta = json.loads((data_dir / "meta.json").read_text())
    scored_with = meta.get("oracle_headroom", {}).get("metrics_version")
    if scored_with != METRICS_VERSION and "simulator" in meta:
        # the simulator is deterministic: the same settings rewrite the same rows, new anchors
        print(f"re-scoring the anchors of {data_dir} (metrics version {scored_with} -> {METRICS_VERSION})")
        generate_dataset(SimulatorConfig(**meta["simulator"]), data_dir.parent)
    if not (base_dir / "config.json").exists():
        print(f"pretraining the base model into {base_dir}")
        pretrain_from_dataset(data_dir.parent / "neutral", base_dir, BaseConfig())


def instrument_warnings(told: dict[str, float], headroom: dict | None, split: str = "test") -> list[str]:
    """What is wrong with the instrument, if anything: the told model far below the anchor."""
    if not headroom:
        return ["no simulator anchors for this dataset (meta.json has no oracle_headroom): the instrument is unchecked"]
    if headroom.get("metrics_version") != METRICS_VERSION:
        return [
            f"the simulator's anchors were scored with metrics version {headroom.get('metrics_version')}, these "
            f"runs with {METRICS_VERSION}: regenerate the dataset (research data generate) to re-score them"
        ]
    warnings = []
    for metric in INSTRUMENT_METRICS:
        anchor, value = headroom["true_preferences"][metric], told[f"{split}/{metric}"]
        if value < INSTRUMENT_BAR * anchor:
            warnings.append(
                f"{metric} {value:.3f} told the true preferences, against {anchor:.3f} for replies that use them "
                f"(bar: {INSTRUMENT_BAR:.0%} of it)"
            )
    return warnings


def print_instrument_verdict(warnings: list[str]) -> None:
    from rich.console import Console

    console = Console(width=140, stderr=True)
    if not warnings:
        console.print(
            f"[green]instrument ok[/green]: told the preferences, unified_lora reaches {INSTRUMENT_BAR:.0%} "
            f"of the true-preferences anchor on {', '.join(INSTRUMENT_METRICS)}"
        )
        return
    console.print("[bold red]WARNING: the instrument does not read its prompt.[/bold red]")
    for line in warnings:
        console.print(f"  - {line}")
    console.print(
        "  A model that ignores what it is told cannot show what any method gains from context; "
        "fix the base model or the prompts before comparing methods."
    )


def main_job(overrides: list[str] = (), methods: tuple[str, ...] = ("no_adaptation", "unified_lora")) -> list:
    """Train and evaluate `methods` and the instrument; print them with the anchors."""
    configs = [(load_config(None, overrides, method), None) for method in methods]
    told = load_config(None, [*overrides, "data.oracle_preferences=true"], "unified_lora")
    configs.append((told, "unified_lora told preferences"))
    ensure_data_and_base(told)
    results = []
    for cfg, name in configs:
        print(f"{name or cfg.method}: train and evaluate")
        tags = INSTRUMENT_TAG if name else None
        results.append(train_and_evaluate(cfg, tags=tags, run_name=name))
    meta = json.loads((Path(told.data.dir) / "meta.json").read_text())
    print_results(results, "test", meta.get("oracle_headroom"))
    print_parameter_recall(results, "test", meta.get("oracle_headroom"))
    print_instrument_verdict(instrument_warnings(results[-1].metrics, meta.get("oracle_headroom")))
    return results
