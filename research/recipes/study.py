"""`research study` / `make study`: the study's table, made by the platform itself.

Every registered method at its default config, and the variants below, on one dataset
and base, over `seeds` seeds, beside the instrument's two told rows; then the report
(research/recipes/report.py) over exactly these runs.

- Reuse and resume: a finished run with the same config (tag `config`, see
  train.config_key) and lineage is reused, never trained again, so an interrupted study
  resumes where it stopped and `SEEDS=3` builds on a 1-seed study.
- Sources: a method that builds on others (hybrid on unified, the merges on per-persona,
  selective routing on every LoRA candidate) is given the study's own runs of them, of the
  same seed, by run id; they come first.
- Seeds: each (entry, seed) is one run; with several seeds each entry also gets a seeds
  parent (train.aggregate_seeds) holding per-persona means, which the report uses.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from research.config import ConfigError
from research.modules import METHODS
from research.modules.base import source_fields
from research.modules.hyper_lora import HyperLoraConfig
from research.recipes.experiment import load_config
from research.recipes.report import build_report
from research.recipes.run import INSTRUMENT_ROWS, ensure_data_and_base
from research.recipes.train import aggregate_seeds, config_key, run_tags, train_and_evaluate
from research.tracking.runs import experiment_id, iter_runs
from research.tracking.sources import LINEAGE


@dataclass(frozen=True)
class Entry:
    """One row of the study: a method with overrides (a variant), or an instrument row."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    instrument: str | None = None  # the MLflow tag value of an instrument row
    # source field -> the study entry whose run it takes (default: the entry named after its method)
    sources: tuple[tuple[str, str], ...] = ()


def cold_start(share: float) -> list[Entry]:
    """hyper_lora's comparators on the personas it holds out (`share`, the same ones): the
    generic adapter, the persona's history in the prompt (over that unified run), the mean
    user vector. The report compares them apart (report.held_out_section)."""
    held = (f"method_args.held_out={share:g}",)
    return [
        Entry("unified_lora held out", "unified_lora", held),
        Entry("retrieval held out", "retrieval", held, sources=(("unified_run", "unified_lora held out"),)),
        Entry("user_embedding held out", "user_embedding", held),
    ]


# Beside each method's defaults: the settings the earlier tables found to matter
VARIANTS = {
    "retrieval": [Entry("retrieval trained with context", "retrieval", ("method_args.train_with_context=true",))],
    "augmented_lora": [Entry("augmented_lora hybrid", "augmented_lora", ("method_args.hybrid=true",))],
    # the paper's public code leaves its projection heads untrained (dual_tower.py)
    "dual_tower": [Entry("dual_tower frozen heads", "dual_tower", ("method_args.freeze_heads=true",))],
    "hyper_lora": cold_start(HyperLoraConfig().held_out),
}


def check_methods(methods: list[str], variants: bool = False) -> None:
    allowed = [*METHODS, *(v.name for vs in VARIANTS.values() for v in vs)] if variants else list(METHODS)
    if unknown := [m for m in methods if m not in allowed]:
        raise ConfigError(f"--methods: {unknown[0]!r} is not registered (allowed: {', '.join(allowed)})")


def study_entries(methods: list[str] | None = None) -> list[Entry]:
    """The instrument rows, then `methods` (default: every registered one; a method brings its
    variants, a variant named alone comes alone), in an order where every source comes before
    the methods built on it."""
    chosen = list(METHODS) if not methods else methods
    check_methods(chosen, variants=True)
    variants = {v.name: v for vs in VARIANTS.values() for v in vs}
    entries = [
        Entry(name, "unified_lora", (f"data.oracle={oracle}",), tag) for oracle, (tag, name) in INSTRUMENT_ROWS.items()
    ]
    for name in ["unified_lora", *(m for m in chosen if m != "unified_lora")]:
        entries += [variants[name]] if name in variants else [Entry(name, name), *VARIANTS.get(name, [])]
    return sources_first(entries)


def sources_first(entries: list[Entry]) -> list[Entry]:
    """`entries` in an order where every source comes before the methods built on it."""

    def rank(entry: Entry) -> int:  # 0: builds on nothing; 1: on named methods; 2: on any candidate
        args = load_config(None, list(entry.overrides), entry.method).method_args
        wanted = set(source_fields(type(args), args).values())
        return 2 if "*" in wanted else 1 if wanted else 0

    return sorted(entries, key=rank)  # stable: the given order within a rank


def _finished_run(client, experiment: str, cfg, key: str):
    """The first finished run of this config and lineage (not a sweep trial or seeds parent), or
    None. The first: a later run of the same config (a seeds child, another `make run`) must not
    change which one is reused, or the runs built on it would no longer match and train again."""
    lineage = run_tags(cfg)
    found = iter_runs(
        client,
        experiment,
        f"tags.config = '{key}' and attributes.status = 'FINISHED'",
        order_by=("attributes.start_time ASC",),
    )
    for run in found:
        tags = run.data.tags
        if "trial" not in tags and "aggregate" not in tags and all(tags.get(k) == lineage[k] for k in LINEAGE):
            return run
    return None


def _seeds_parent(client, experiment: str, children: list[str]):
    runs = iter_runs(
        client,
        experiment,
        f"tags.aggregate = 'seeds' and attributes.status = 'FINISHED' and tags.`seeds.runs` = '{','.join(children)}'",
    )
    return next(iter(runs), None)


def _holds_out_by_default(method: str) -> bool:
    """Whether the method's default config holds personas out of training (other splits)."""
    return bool(getattr(load_config(None, [], method).method_args, "held_out", 0))


def _with_sources(entry: Entry, done: dict[tuple[str, int], str], seed: int) -> list[str]:
    """`entry`'s overrides, its source fields naming the study's runs of the same seed."""
    overrides = list(entry.overrides)
    args = load_config(None, overrides, entry.method).method_args
    for field, method in source_fields(type(args), args).items():
        if method == "*":  # every LoRA run of the study (selective routing routes between them)
            # on the study's splits: hyper_lora's runs hold personas out, which could not be routed
            runs = [
                run_id
                for (name, s), run_id in done.items()
                if s == seed
                and name in METHODS
                and name != "unified_lora"
                and METHODS[name].adapter_kind == "lora"
                and not _holds_out_by_default(name)
            ]
            overrides.append(f"method_args.{field}={','.join(runs)}")
        else:
            source = dict(entry.sources).get(field, method)
            if (source, seed) not in done:
                raise ConfigError(f"{entry.name!r} builds on {source!r}: name both in --methods")
            overrides.append(f"method_args.{field}={done[source, seed]}")
    return overrides


def train_entries(
    overrides: list[str], entries: list[Entry], seeds: int, parent_run_id: str | None = None, label: str = ""
) -> dict[tuple[str, int], str]:
    """Train, or reuse a finished run of the same config and lineage, every (entry, seed); the
    runs trained here are children of `parent_run_id`. Returns (entry name, seed) -> run id."""
    experiment = experiment_id(load_config(None, list(overrides), "unified_lora").tracking)
    client = mlflow.tracking.MlflowClient()
    done: dict[tuple[str, int], str] = {}
    steps = [(entry, seed) for entry in entries for seed in range(seeds)]
    trained: list[float] = []
    for step, (entry, seed) in enumerate(steps, 1):
        cfg = load_config(None, [*overrides, *_with_sources(entry, done, seed)], entry.method)
        cfg = dataclasses.replace(cfg, seed=cfg.seed + seed)
        where = f"{label}[{step}/{len(steps)}] {entry.name}, seed {cfg.seed}"
        if run := _finished_run(client, experiment, cfg, config_key(cfg)):
            done[entry.name, seed] = run.info.run_id
            print(f"{where}: reusing run {run.info.run_id[:8]}", flush=True)
            continue
        print(f"{where}: training", flush=True)
        started = time.perf_counter()
        tags = {"instrument": entry.instrument} if entry.instrument else None
        done[entry.name, seed] = train_and_evaluate(cfg, parent_run_id, tags, run_name=entry.name).run_id
        trained.append(time.perf_counter() - started)
        left = (len(steps) - step) * sum(trained) / len(trained) / 60
        print(f"{where}: done in {trained[-1] / 60:.1f} min; at most about {left:.0f} min left", flush=True)
    return done


def seed_rows(overrides: list[str], entries: list[Entry], done: dict[tuple[str, int], str], seeds: int) -> list[str]:
    """Per entry, the run a table shows: its run (one seed), or its seeds parent over the
    seeds' runs (per-persona means), made once and then reused."""
    client = mlflow.tracking.MlflowClient()
    rows = []
    for entry in entries:
        children = [done[entry.name, seed] for seed in range(seeds)]
        if seeds == 1:
            rows.append(children[0])
            continue
        cfg = load_config(None, [*overrides, *entry.overrides], entry.method)
        parent = _seeds_parent(client, experiment_id(cfg.tracking), children)
        rows.append(parent.info.run_id if parent else aggregate_seeds(cfg, children).run_id)
    return rows


def run_study(
    overrides: list[str] = (), methods: list[str] | None = None, seeds: int = 1, out: str | Path = "reports/study"
) -> Path:
    """Train (or reuse) every entry over `seeds`, then write the report; returns its HTML page."""
    entries = study_entries(methods)
    first = load_config(None, list(overrides), "unified_lora")
    ensure_data_and_base(first)
    done = train_entries(list(overrides), entries, seeds)
    return build_report(first.tracking, seed_rows(list(overrides), entries, done, seeds), "param_f1", Path(out))
