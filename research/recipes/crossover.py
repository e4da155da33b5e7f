"""`research crossover` / `make crossover`: where personalization starts to beat unified.

The seeds' study fixed 20 training dialogues per persona and one strength of persona
signal, and concluded that personalization "needs 100+ examples per persona". Here both
vary. A cell of the grid is its own simulated dataset: `personas` personas, each with N
training dialogues and the same VAL_DIALOGUES and TEST_DIALOGUES after them, each
persona's preferences deviating from the population average by `signal` (0: none, so
nothing can be personalized; 1: the default dataset's; 2: double; SimulatorConfig.signal).

In each cell every method trains once per seed (reused when a finished run of the same
config and lineage exists, so an interrupted map resumes) and is compared with unified on
per-persona param F1 (Holm over the cell's methods): whether it beats unified (the parts of
the study's bar that compare with unified), whether it clears the whole bar (which adds an
absolute floor on the worst persona), and the share of the cell's oracle headroom it captures. MLflow: one parent run per grid and method list, one
child run per cell holding the cell's figures, the cell's method runs children of the cell.
Written to OUT/: crossover.md, one heatmap per method and one of the best method per cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np

from research.config import ConfigError
from research.data.generate import SimulatorConfig
from research.evaluation.statistics import AGAINST_UNIFIED, compare, holm, verdict
from research.models.base import check_base
from research.recipes.analysis import per_persona_table
from research.recipes.data import generate_dataset
from research.recipes.experiment import load_config
from research.recipes.study import Entry, check_methods, seed_rows, sources_first, train_entries
from research.tracking.runs import experiment_id, iter_runs

VAL_DIALOGUES, TEST_DIALOGUES = 2, 4  # per persona, in every cell: each cell is scored on as much
METRIC = "param_f1"  # the parameters the personas' preferences decide; signal 0 leaves only style
MIN_HEADROOM = 0.01  # below it a cell has nothing to personalize: no share


@dataclass(frozen=True)
class Grid:
    name: str
    train_dialogues: tuple[int, ...]  # per persona
    signals: tuple[float, ...]
    personas: int
    seeds: int


# coarse: 59 minutes on 2 CPU cores with the shipped base, on one thread beside another job; full: for GPUs
GRIDS = {
    grid.name: grid
    for grid in (
        Grid("coarse", train_dialogues=(5, 10, 20, 50, 100), signals=(0.0, 1.0, 2.0), personas=16, seeds=1),
        Grid("full", train_dialogues=(5, 10, 20, 50, 100), signals=(0.0, 0.5, 1.0, 1.5, 2.0), personas=200, seeds=3),
    )
}
# unified first (the baseline); per-persona, hybrid and augmented LoRA; retrieval (no
# per-persona training: the cold-start method whose comparison needs no held-out personas;
# hyper_lora's does, and a cell's 16 personas would hold out 3); the learned prompt
DEFAULT_METHODS = ("unified_lora", "per_persona_lora", "hybrid_lora", "augmented_lora", "retrieval", "prompt_persona")


def cell_key(grid: Grid, train: int, signal: float) -> str:
    return f"train{train}-signal{signal:g}-personas{grid.personas}"


def cell_data(grid: Grid, train: int, signal: float, root: Path) -> Path:
    """The cell's dataset (generated once; the simulator is deterministic)."""
    directory = root / cell_key(grid, train, signal)
    if not (directory / "personas" / "meta.json").exists():
        total = train + VAL_DIALOGUES + TEST_DIALOGUES
        simulator = SimulatorConfig(
            personas=grid.personas,
            dialogues=total,
            signal=signal,
            val_fraction=VAL_DIALOGUES / total,
            test_fraction=TEST_DIALOGUES / total,
        )
        generate_dataset(simulator, directory, neutral=False)
    return directory / "personas"


def _splits(train: int) -> list[str]:
    total = train + VAL_DIALOGUES + TEST_DIALOGUES
    return [f"data.val_fraction={VAL_DIALOGUES / total!r}", f"data.test_fraction={TEST_DIALOGUES / total!r}"]


def beats_unified(figures: dict) -> bool:
    """More than 60% of personas improved, +0.03 mean, Holm p < 0.05: the study's bar without
    its floor on the worst persona, which at TEST_DIALOGUES per persona is mostly noise."""
    return not verdict(figures, figures["p_holm"], AGAINST_UNIFIED)


def cell_figures(run_ids: dict[str, str], anchor: dict) -> dict[str, dict]:
    """Per method but unified: the comparison with unified on per-persona test METRIC, the
    bar's verdict (Holm over the methods) and the share of the cell's oracle headroom (true
    preferences minus population average, the most knowing the persona can add) its gain over
    unified is. Not the report's share of the gap from unified to the true anchor: at signal 0
    that gap is the model's own error, which no personalization closes."""
    tables = {name: per_persona_table(run_id) for name, run_id in run_ids.items()}
    others = [name for name in run_ids if name != "unified_lora"]
    results = [compare(tables[name], tables["unified_lora"], METRIC) for name in others]
    figures = {}
    for name, result, p in zip(others, results, holm([r["p_value"] for r in results]), strict=True):
        headroom = anchor["headroom"][METRIC]
        share = result["mean_difference"] / headroom if headroom > MIN_HEADROOM else None
        missed = verdict(result, p)
        figures[name] = {**result, "p_holm": p, "share": share, "clears": not missed, "missed": missed}
    return figures


def _parent(client, experiment: str, name: str, key: str, description: dict) -> str:
    """The grid's parent run: the one already made for this grid, methods and overrides, or a new one."""
    for run in iter_runs(client, experiment, f"tags.crossover = '{key}'"):
        client.update_run(run.info.run_id, "RUNNING")
        return run.info.run_id
    run = client.create_run(experiment, run_name=name, tags={"crossover": key})
    for field, value in description.items():
        client.log_param(run.info.run_id, field, value)
    return run.info.run_id


def _cell_run(client, experiment: str, parent: str, key: str):
    """(run id, finished?) of the cell's child run, made when missing."""
    for run in iter_runs(client, experiment, f"tags.`mlflow.parentRunId` = '{parent}' and tags.cell = '{key}'"):
        return run.info.run_id, run.info.status == "FINISHED"
    run = client.create_run(experiment, run_name=f"cell {key}", tags={"mlflow.parentRunId": parent, "cell": key})
    return run.info.run_id, False


def _log_cell(client, run_id: str, runs: dict[str, str], figures: dict[str, dict], anchor: dict) -> None:
    metrics = {
        "anchor/headroom": anchor["headroom"][METRIC],
        "anchor/true_preferences": anchor["true_preferences"][METRIC],
    }
    for name, f in figures.items():
        metrics |= {f"gain/{name}": f["mean_difference"], f"improved/{name}": f["improved_share"]}
        metrics |= {f"clears/{name}": float(f["clears"]), f"beats/{name}": float(beats_unified(f))}
        metrics[f"p_holm/{name}"] = f["p_holm"]
        if f["share"] is not None:
            metrics[f"share/{name}"] = f["share"]
    for key, value in metrics.items():
        if math.isfinite(value):
            client.log_metric(run_id, key, value)
    for name, run in runs.items():
        client.set_tag(run_id, f"run.{name}", run)
    client.log_dict(run_id, figures, "figures.json")
    client.set_terminated(run_id, "FINISHED")


def _read_cell(client, run_id: str) -> tuple[dict[str, str], dict[str, dict]]:
    run = client.get_run(run_id)
    runs = {k.removeprefix("run."): v for k, v in run.data.tags.items() if k.startswith("run.")}
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="figures.json")
    return runs, json.loads(Path(path).read_text())


def grid_named(name: str, seeds: int | None = None) -> Grid:
    if name not in GRIDS:
        raise ConfigError(f"--grid: {name!r} is not a grid (allowed: {', '.join(GRIDS)})")
    return dataclasses.replace(GRIDS[name], seeds=seeds or GRIDS[name].seeds)


def run_crossover(
    overrides: list[str] = (),
    grid: Grid = GRIDS["coarse"],
    methods: list[str] | None = None,
    out: str | Path = "reports/crossover",
    data_root: str | Path = "data/crossover",
) -> Path:
    """Train (or reuse) every method in every cell of the grid, then write the map; returns
    OUT/crossover.md."""
    chosen = ["unified_lora", *(m for m in (methods or DEFAULT_METHODS) if m != "unified_lora")]
    check_methods(chosen)
    entries = sources_first([Entry(m, m) for m in chosen])
    overrides = list(overrides)
    for entry in entries:  # every key and value checked before anything is written
        load_config(None, [*overrides, *entry.overrides], entry.method)
    cfg = load_config(None, overrides, "unified_lora")
    check_base(cfg.base_model)
    experiment = experiment_id(cfg.tracking)
    client = mlflow.tracking.MlflowClient()
    description = {**{k: str(v) for k, v in asdict(grid).items()}, "methods": ",".join(chosen)}
    description["overrides"] = " ".join(overrides)
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
    parent = _parent(client, experiment, f"crossover {grid.name}", key, description)
    cells = [(n, s) for s in grid.signals for n in grid.train_dialogues]
    results: dict[tuple[int, float], dict[str, dict]] = {}
    for index, (train, signal) in enumerate(cells, 1):
        name = cell_key(grid, train, signal)
        cell_run, finished = _cell_run(client, experiment, parent, name)
        if finished:
            print(f"cell {index}/{len(cells)} {name}: done earlier (run {cell_run[:8]})", flush=True)
            results[train, signal] = _read_cell(client, cell_run)[1]
            continue
        data = cell_data(grid, train, signal, Path(data_root))
        cell_overrides = [*overrides, f"data.dir={data}", *_splits(train)]
        done = train_entries(cell_overrides, entries, grid.seeds, cell_run, f"cell {index}/{len(cells)} {name} ")
        rows = dict(zip((e.name for e in entries), seed_rows(cell_overrides, entries, done, grid.seeds), strict=True))
        anchor = json.loads((data / "meta.json").read_text())["oracle_headroom"]
        results[train, signal] = cell_figures(rows, anchor)
        _log_cell(client, cell_run, rows, results[train, signal], anchor)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = heatmaps(grid, [e.name for e in entries if e.name != "unified_lora"], results)
    for file, data in images.items():
        (out / file).write_bytes(data)
    (out / "crossover.md").write_text(markdown(grid, results, parent, images))
    client.log_artifacts(parent, str(out), "crossover")
    client.set_terminated(parent, "FINISHED")
    return out / "crossover.md"


def best_per_cell(results: dict[tuple[int, float], dict[str, dict]]) -> dict[tuple[int, float], str]:
    """Per cell, the method with the largest gain among those that beat unified, else unified."""
    best = {}
    for cell, figures in results.items():
        winners = {name: f["mean_difference"] for name, f in figures.items() if beats_unified(f)}
        best[cell] = max(winners, key=winners.get) if winners else "unified_lora"
    return best


def first_wins(grid: Grid, results: dict, method: str, wins=beats_unified) -> dict[float, int | None]:
    """Per signal, the fewest training dialogues per persona at which `method` wins: beats
    unified, or with `wins=lambda f: f["clears"]` clears the whole bar (None: nowhere in the grid)."""
    return {s: next((n for n in grid.train_dialogues if wins(results[n, s][method])), None) for s in grid.signals}


def heatmaps(grid: Grid, methods: list[str], results: dict) -> dict[str, bytes]:
    """PNG per method (share of headroom captured; a check mark where it beats unified, "bar"
    where it clears the whole bar) and one of the best method per cell."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(title: str, values: np.ndarray, labels: list[list[str]], cmap: str, vmin, vmax) -> bytes:
        fig, ax = plt.subplots(figsize=(1.2 * len(grid.train_dialogues) + 2, 0.8 * len(grid.signals) + 1.5))
        image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        ax.set_xticks(range(len(grid.train_dialogues)), [str(n) for n in grid.train_dialogues])
        ax.set_yticks(range(len(grid.signals)), [f"{s:g}" for s in grid.signals])
        ax.set_xlabel("training dialogues per persona")
        ax.set_ylabel("persona signal (x default deviation)")
        ax.set_title(title, fontsize=10)
        for i, row in enumerate(labels):
            for j, text in enumerate(row):
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
        if cmap != "tab10":
            fig.colorbar(image, ax=ax, label="share of oracle headroom captured")
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        return buffer.getvalue()

    images = {}
    shape = (len(grid.signals), len(grid.train_dialogues))
    for method in methods:
        values, labels = np.full(shape, np.nan), [["" for _ in grid.train_dialogues] for _ in grid.signals]
        for i, s in enumerate(grid.signals):
            for j, n in enumerate(grid.train_dialogues):
                f = results[n, s][method]
                values[i, j] = np.nan if f["share"] is None else np.clip(f["share"], -1, 1)
                share = "n/a" if f["share"] is None else f"{f['share']:+.2f}"
                mark = " ✓ bar" if f["clears"] else " ✓" if beats_unified(f) else ""
                labels[i][j] = f"{share}\n{f['mean_difference']:+.3f}{mark}"
        images[f"crossover_{method}.png"] = figure(
            f"{method} vs unified: headroom share, param F1 gain\n(✓ beats unified: >60% improved, +0.03, Holm p<0.05)",
            values,
            labels,
            "RdBu",
            -1,
            1,
        )
    best = best_per_cell(results)
    names = ["unified_lora", *methods]
    values = np.array([[names.index(best[n, s]) for n in grid.train_dialogues] for s in grid.signals], dtype=float)
    labels = [[best[n, s].replace("_", " ") for n in grid.train_dialogues] for s in grid.signals]
    images["crossover_best.png"] = figure(
        "best method per cell: the largest gain among those that beat unified", values, labels, "tab10", 0, 9
    )
    return images


def _standing(figures: dict) -> str:
    return "clears the bar" if figures["clears"] else "beats unified" if beats_unified(figures) else "no win"


def markdown(grid: Grid, results: dict, parent: str, images: dict[str, bytes]) -> str:
    methods = list(next(iter(results.values())))
    lines = [
        f"# Crossover map ({grid.name} grid)",
        "",
        f"{grid.personas} personas per cell, {VAL_DIALOGUES} val and {TEST_DIALOGUES} test dialogues each, "
        f"{grid.seeds} seed(s); metric: test {METRIC} per persona against unified_lora (the study's bar, Holm over "
        f"the cell's methods). Unified trains on the cell's dialogues too ({grid.personas} x N), so each cell "
        f"compares methods on equal data. MLflow parent run {parent}.",
        "",
        "## Where each method starts to win",
        "",
        "The fewest training dialogues per persona from which the method beats unified: more than 60% of "
        "personas improved, a mean gain of +0.03 or more, Holm p < 0.05 (the study's bar without its floor "
        "on the worst persona); 'whole bar': from where it also clears the bar's floor, every persona above 0.70.",
        "",
        "| method | " + " | ".join(f"signal {s:g}" for s in grid.signals) + " |",
        "|---|" + "---|" * len(grid.signals),
    ]

    def first(n: int | None) -> str:
        return f"from {n} dialogues" if n is not None else "never in the grid"

    for method in methods:
        beats = first_wins(grid, results, method).values()
        clears = first_wins(grid, results, method, wins=lambda f: f["clears"]).values()
        cells = [first(b) + (f"; whole bar {first(c)}" if c else "") for b, c in zip(beats, clears, strict=True)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if not any(f["clears"] for figures in results.values() for f in figures.values()):
        lines.append("\nNo method clears the whole bar in any cell: some persona stays at or below 0.70.")
    for s in grid.signals:
        wins = [n for n in grid.train_dialogues if any(beats_unified(results[n, s][m]) for m in methods)]
        lines.append(
            f"\nSignal {s:g}: "
            + (
                f"a method beats unified from {wins[0]} training dialogues per persona."
                if wins
                else "no method beats unified in the grid."
            )
        )
    lines += ["", "## Every cell", "", "| cell | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in grid.signals:
        for n in grid.train_dialogues:
            figures = results[n, s]
            cells = [
                ("n/a" if figures[m]["share"] is None else f"{figures[m]['share']:+.2f}")
                + f" ({figures[m]['mean_difference']:+.3f}, {_standing(figures[m])})"
                for m in methods
            ]
            lines.append(f"| {n} dialogues, signal {s:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: the gain over unified as a share of the cell's oracle headroom (true-preferences minus "
        "population-average anchor; n/a where there is none), the param F1 gain, and whether it beats unified or "
        "also clears the whole bar.",
    ]
    lines += ["", *(f"![{name}]({name})" for name in images)]
    return "\n".join(lines) + "\n"
