"""The main job (`make run`) and the instrument check (`research instrument`).

The main job: data if missing, the shipped base (its fingerprint checked), then
no_adaptation, unified_lora and the instrument (below) trained, evaluated on test, logged
to MLflow and printed in one table next to the simulator's anchors.

The instrument: a comparison of methods means something only if the base model uses
what its prompt says. It is two runs of `unified_lora`, each told something in every
system turn (train and test), each with one cause:
  told resolved     the settings each reply makes, resolved for the dialogue's context
                    (`data.oracle=resolved`): reading alone; a perfect reader scores 1.0,
                    and the warning keys on this row;
  told preferences  the persona's raw preferences (`data.oracle=preferences`): reading plus
                    the population's context arithmetic, which a copier cannot do.
Their MLflow runs are tagged `instrument=told_resolved` / `instrument=told_preferences`,
so reports show them as the reference rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from research.data.generate import SimulatorConfig
from research.evaluation.metrics import METRICS_VERSION
from research.models.base import check_base
from research.recipes.data import generate_dataset
from research.recipes.experiment import load_config
from research.recipes.tables import print_parameter_recall, print_results
from research.recipes.train import train_and_evaluate

# oracle -> (MLflow tag value, run name) of the instrument's told rows
INSTRUMENT_ROWS = {
    "resolved": ("told_resolved", "unified_lora told resolved"),
    "preferences": ("told_preferences", "unified_lora told preferences"),
}
# the told-resolved model must reach this share of the true-preferences anchor on these metrics
INSTRUMENT_BAR = 0.9
INSTRUMENT_METRICS = ("param_f1", "numerical_precision")


def ensure_data_and_base(cfg) -> None:
    """Generate the dataset when it is missing and re-score the simulator's anchors when they
    were scored with other metrics; check the base model (never pretrained here)."""
    data_dir = Path(cfg.data.dir)
    if not (data_dir / "meta.json").exists():
        print(f"generating the persona dataset into {data_dir.parent}")
        generate_dataset(SimulatorConfig(), data_dir.parent)
    meta = json.loads((data_dir / "meta.json").read_text())
    scored_with = meta.get("oracle_headroom", {}).get("metrics_version")
    if scored_with != METRICS_VERSION and "simulator" in meta:
        # the simulator is deterministic: the same settings rewrite the same rows, new anchors
        print(f"re-scoring the anchors of {data_dir} (metrics version {scored_with} -> {METRICS_VERSION})")
        generate_dataset(SimulatorConfig(**meta["simulator"]), data_dir.parent)
    check_base(cfg.base_model)


def instrument_warnings(told: dict[str, float], headroom: dict | None, split: str = "test") -> list[str]:
    """What is wrong with the instrument, if anything: the model told the resolved settings far
    below the true-preferences anchor (which a perfect reader reaches)."""
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
                f"{metric} {value:.3f} told the resolved settings, against {anchor:.3f} for replies that use them "
                f"(bar: {INSTRUMENT_BAR:.0%} of it)"
            )
    return warnings


def print_instrument_verdict(warnings: list[str]) -> None:
    from rich.console import Console

    console = Console(width=140, stderr=True)
    if not warnings:
        console.print(
            f"[green]instrument ok[/green]: told the resolved settings, unified_lora reaches {INSTRUMENT_BAR:.0%} "
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
    """Train and evaluate `methods` and the instrument's two told rows; print them with the anchors."""
    configs = [(load_config(None, overrides, method), None, None) for method in methods]
    for oracle, (tag, name) in INSTRUMENT_ROWS.items():
        told = load_config(None, [*overrides, f"data.oracle={oracle}"], "unified_lora")
        configs.append((told, name, {"instrument": tag}))
    ensure_data_and_base(configs[0][0])
    results = []
    for cfg, name, tags in configs:
        print(f"{name or cfg.method}: train and evaluate")
        results.append(train_and_evaluate(cfg, tags=tags, run_name=name))
    meta = json.loads((Path(configs[0][0].data.dir) / "meta.json").read_text())
    print_results(results, "test", meta.get("oracle_headroom"))
    print_parameter_recall(results, "test", meta.get("oracle_headroom"))
    told_resolved = results[len(methods)]
    print_instrument_verdict(instrument_warnings(told_resolved.metrics, meta.get("oracle_headroom")))
    return results
