"""Train and evaluate one method: the recipe behind `research train` and `make train`.

setup     load the base model, build the shared PersonaDataModule and the method's module
fit       Lightning, early stopping on `train.monitor`, best weights restored at the end
evaluate  greedy generation on each eval split; metrics per turn, per persona, overall
log       one MLflow run: config, metrics, curves, time/* (setup, fit, eval seconds),
          per_persona.parquet, predictions.parquet, config.yaml and the adapter(s) in PEFT format
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import lightning.pytorch as L
import mlflow
import numpy as np
import polars as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar

from research.config import ConfigError, ExperimentConfig, TrainConfig, flatten, to_dict
from research.data.schema import fingerprint, load_dataset
from research.datamodules.persona import PersonaDataModule, held_out_personas
from research.evaluation.clustering import (
    behaviour_features,
    check_clustering,
    cluster_personas,
    description_features,
    log_clustering,
)
from research.evaluation.generation import generate_split, score
from research.evaluation.metrics import overall
from research.models.base import base_fingerprint, load_base
from research.models.devices import inference_device, trainer_devices
from research.models.embedder import check_embedders
from research.modules import METHODS
from research.modules.base import Needs, Provided, Source
from research.recipes.analysis import per_persona_table
from research.recipes.experiment import load_config
from research.tracking.runs import RunLogger, experiment_id, log_adapter_model, log_dataset, tracked_run
from research.tracking.sources import resolve_sources


@dataclass
class RunResult:
    run_id: str
    name: str  # the run's name: the method's, or what sets it apart ("unified_lora told preferences")
    metrics: dict[str, float]  # "val/embedding_similarity", "test/param_f1", ...
    per_persona: pl.DataFrame  # split, persona_id, every metric
    seconds: dict[str, float]  # time/setup_s, time/fit_s, time/eval_s, time/total_s


class RestoreBestWeights(Callback):
    """Keep the trainable weights of the best validation epoch in memory and put them
    back when fit ends (a checkpoint file would hold the whole base model)."""

    def __init__(self, monitor: str, mode: Literal["min", "max"] = "min") -> None:
        self.monitor, self.sign, self.best_state = monitor, 1.0 if mode == "min" else -1.0, None
        self.best_value = float("inf")  # of sign * value: lower is better either way

    def on_validation_end(self, trainer, module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking and self.sign * float(value) < self.best_value:
            self.best_value, self.best_state = self.sign * float(value), module.trainable_state()

    def on_fit_end(self, trainer, module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state, strict=False)


def monitor_mode(train: TrainConfig) -> Literal["min", "max"]:
    """Lower is better for a loss; for every other metric (similarity, F1, precision) higher."""
    if train.monitor_mode != "auto":
        return train.monitor_mode
    return "min" if "loss" in train.monitor.rsplit("/", 1)[-1] else "max"


def make_trainer(cfg: ExperimentConfig, logger=None, per_group_weights: bool = False, **overrides) -> L.Trainer:
    """The Trainer every method fits with (benchmarks use it too, so they measure this), on the
    config's devices; `per_group_weights`: the module's (research/modules/base.py)."""
    # tqdm like every other bar here (rich draws nothing in logs); none where a caller turns bars off
    progress = [TQDMProgressBar(refresh_rate=10)] if overrides.get("enable_progress_bar", True) else []
    settings = dict(
        **trainer_devices(cfg.train, per_group_weights),
        max_epochs=cfg.train.max_epochs,
        precision=cfg.train.precision,
        limit_train_batches=cfg.train.limit_train_batches,
        num_sanity_val_steps=0,
        logger=logger or False,
        callbacks=[
            EarlyStopping(cfg.train.monitor, patience=cfg.train.patience, mode=monitor_mode(cfg.train)),
            RestoreBestWeights(cfg.train.monitor, monitor_mode(cfg.train)),
            *progress,
        ],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    return L.Trainer(**(settings | overrides))


def fit(module, datamodule, cfg: ExperimentConfig, run_id: str | None, callbacks=()) -> None:
    logger = run_id and RunLogger(experiment_name=cfg.tracking.experiment, tracking_uri=cfg.tracking.uri, run_id=run_id)
    trainer = make_trainer(cfg, logger, module.per_group_weights)
    if cfg.train.batch_size % trainer.world_size:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} is the batch of a step over all devices: it does not split "
            f"evenly over {trainer.world_size} devices"
        )
    if cfg.train.monitor != "val/loss" and not any(isinstance(c, GenerativeValidation) for c in callbacks):
        callbacks = [GenerativeValidation(cfg), *callbacks]  # the monitored metric must exist each epoch
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, datamodule=datamodule)


class GenerativeValidation(Callback):
    """Generates and scores the val split after each validation epoch and logs
    `val/<metric>`, so the metrics of DESIGN.md can be monitored during fit (a sweep
    prunes on them). Costs one val generation per epoch, so only sweeps that prune on
    such a metric add it."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        scores = None
        if trainer.is_global_zero:  # under DDP one process generates, and every process logs its scores
            predictions = generate_split(module, trainer.datamodule, "val", self.cfg.eval, self.cfg.train.precision)
            scores = score(predictions, self.cfg.eval.embedder)[2]
        for name, value in trainer.strategy.broadcast(scores).items():
            module.log(f"val/{name}", value, sync_dist=True)


@cache
def _loaded_base(name_or_path: str):
    return load_base(name_or_path)


def base_copy(name_or_path: str):
    """(tokenizer, a fresh copy of the model): the base is read once per process, so a
    sweep worker does not reload it for every trial (methods wrap the model in place)."""
    tokenizer, model = _loaded_base(name_or_path)
    return tokenizer, copy.deepcopy(model)


def resolved_config(cfg: ExperimentConfig, sources: dict[str, list[Source]]) -> ExperimentConfig:
    """A copy of `cfg` whose source fields name the runs they were resolved to."""
    values = {
        name: runs[0].run_id if isinstance(getattr(cfg.method_args, name), str) else tuple(r.run_id for r in runs)
        for name, runs in sources.items()
    }
    return dataclasses.replace(cfg, method_args=dataclasses.replace(cfg.method_args, **values))


def describe(cfg: ExperimentConfig) -> str:
    """The method and what differs from its defaults, e.g. "unified_lora data.oracle=resolved",
    so two runs that differ read differently in the MLflow runs table."""
    defaults = flatten(to_dict(load_config(method=cfg.method)))

    def short(value) -> str:  # a path by its last part, a run id by its first 8 characters
        text = str(value).rstrip("/")
        text = text.rsplit("/", 1)[-1]
        return text[:8] if len(text) == 32 and text.isalnum() else text[:24]

    changed = [
        f"{key}={short(value)}"
        for key, value in flatten(to_dict(cfg)).items()
        if not key.startswith(("tracking.", "data.cache_dir")) and value != defaults.get(key)
    ]
    return " ".join([cfg.method, *changed])


def method_needs(cfg: ExperimentConfig) -> Needs:
    """What `cfg.method` asks for; a config's `held_out` share must be one its needs declare
    (a method with an adapter per persona cannot train without some of them)."""
    needs = METHODS[cfg.method].needs(cfg.method_args)
    if (asked := getattr(cfg.method_args, "held_out", 0.0)) != needs.held_out:
        raise ConfigError(f"method_args.held_out={asked}: {cfg.method} cannot hold personas out of training")
    return needs


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """What a run was made on (its lineage: research.tracking.sources.LINEAGE); sources and
    compared runs must match it. A persona-level split is part of the splits."""
    held_out = method_needs(cfg).held_out
    return {
        "method": cfg.method,
        "dataset": fingerprint(cfg.data.dir),
        "splits": f"val={cfg.data.val_fraction:.6g},test={cfg.data.test_fraction:.6g}"
        + (f",held_out={held_out:.6g}" if held_out else ""),
        "prompt": f"user_name={cfg.data.user_name},oracle={cfg.data.oracle},max_length={cfg.data.max_length}",
        "base_model": cfg.base_model,
        "base_fingerprint": base_fingerprint(cfg.base_model),
    }


def config_key(cfg: ExperimentConfig) -> str:
    """The config as given (source fields unresolved), as a hash, without where it is tracked or
    where its tokens are cached: two finished runs with the same key and lineage trained and
    evaluated the same thing, so a study reuses one instead of training it again."""
    kept = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(("tracking.", "data.cache_dir"))}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_module(cfg: ExperimentConfig, model, tokenizer, datamodule: PersonaDataModule, sources=None):
    """(the method's module, what it was provided): its needs resolved (sources, when not
    given, from the tracking store), the module built, the datamodule told its groups."""
    if sources is None:
        sources = resolve_sources(cfg.method_args, run_tags(cfg), experiment_id(cfg.tracking))
    provided = provide(method_needs(cfg), datamodule, sources)
    module = METHODS[cfg.method](model, tokenizer, cfg.train, cfg.method_args, provided)
    datamodule.group_of, datamodule.held_out = module.group_of, provided.held_out
    return module, provided


def provide(needs: Needs, datamodule: PersonaDataModule, sources: dict[str, list[Source]]) -> Provided:
    """What the method asked for (the recipe logs the clustering)."""
    held_out = held_out_personas(list(datamodule.persona_ids), needs.held_out)
    provided = Provided(
        persona_ids=list(datamodule.persona_ids),
        trained_personas={example["persona_id"] for example in datamodule.examples["train"]} - held_out,
        held_out=held_out,
        sources=sources,
        context=datamodule.context,
    )
    if needs.clustering is not None:
        provided.clustering = cluster_personas(needs.clustering, datamodule)
    if needs.groups == "persona":
        provided.groups = {persona: persona for persona in provided.persona_ids}
    elif needs.groups == "cluster":
        provided.groups = provided.clustering.groups()
    if needs.actions or needs.user_turns:
        _, dialogues = load_dataset(datamodule.cfg.dir)
        train = {e["dialogue_id"] for e in datamodule.examples["train"] if e["persona_id"] not in held_out}
        rows = list(dialogues.filter(pl.col("dialogue_id").is_in(train)).iter_rows(named=True))
        if needs.actions:
            provided.actions = {
                row["dialogue_id"]: [turn["actions"] for turn in row["turns"] if turn["role"] == "assistant"]
                for row in rows
            }
        if needs.user_turns:
            provided.user_turns = {
                row["dialogue_id"]: (
                    row["persona_id"],
                    [turn["text"] for turn in row["turns"] if turn["role"] == "user"],
                )
                for row in rows
            }
    if needs.persona_features is not None:
        provided.persona_features = np.hstack(
            [description_features(datamodule, needs.persona_features), behaviour_features(datamodule)]
        )
    return provided


def check_layer_names(method_args, model) -> None:
    """Every field of the method's config whose metadata says {"base_layers": True} names
    Linear layers the base model has (PEFT would refuse them only inside the run)."""
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    for f in dataclasses.fields(method_args):
        if f.metadata.get("base_layers") and (unknown := [n for n in getattr(method_args, f.name) if n not in linear]):
            raise ConfigError(
                f"method_args.{f.name}: the base model has no Linear layer named {unknown[0]!r} "
                f"(it has: {', '.join(linear)})"
            )


@dataclass
class Prepared:
    """What a run is made of, every input checked: the config with its sources resolved,
    the base (a fresh copy), the tokenized data, the method's needs and the run's tags."""

    cfg: ExperimentConfig
    tokenizer: object
    model: object
    datamodule: PersonaDataModule
    needs: Needs
    sources: dict[str, list[Source]]
    tags: dict[str, str]


def prepare(cfg: ExperimentConfig, tags: dict[str, str] | None = None) -> Prepared:
    """Check what the config alone cannot show (load_config checked that), in the order that
    writes nothing until it is known good: the dataset (every row), the base model, the source
    runs in the tracking store, the layers the method adapts, then the data split and tokenized
    (a cache entry), and the clustering's k against the personas. A run, a seeds parent or a
    study is made only after this."""
    # run_tags validates the dataset: its fingerprint reads every row
    tags = {**(tags or {}), **run_tags(cfg), "config": config_key(cfg)}
    check_embedders(cfg)
    tokenizer, model = base_copy(cfg.base_model)
    sources = resolve_sources(cfg.method_args, tags, experiment_id(cfg.tracking))
    tags |= {f"source.{name}": ",".join(s.run_id for s in runs) for name, runs in sources.items()}
    check_layer_names(cfg.method_args, model)
    needs = method_needs(cfg)
    context = needs.context(cfg.data) if needs.context else None
    datamodule = PersonaDataModule(
        cfg.data, tokenizer, cfg.train.batch_size, cfg.seed, context=context, augment=needs.augment
    )
    datamodule.prepare_data()  # splits first: a persona left without training dialogues writes nothing
    datamodule.setup()
    if needs.clustering is not None:
        check_clustering(needs.clustering, len(datamodule.persona_ids), "method_args.clustering")
    return Prepared(resolved_config(cfg, sources), tokenizer, model, datamodule, needs, sources, tags)


def log_outputs(metrics: dict[str, float], artifacts: dict[str, object]) -> None:
    """A method's own metrics and artifacts (JSON for dicts, Parquet for frames, bytes as they are)."""
    if metrics:
        mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in artifacts.items():
            path = Path(tmp, name)
            if isinstance(content, dict):
                path.write_text(json.dumps(content, indent=1, sort_keys=True))
            elif isinstance(content, pl.DataFrame):
                content.write_parquet(path)
            else:
                path.write_bytes(content)
        if artifacts:
            mlflow.log_artifacts(tmp)


def train_and_evaluate(
    cfg: ExperimentConfig,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks=(),
    run_name: str | None = None,
) -> RunResult:
    """One MLflow run of `cfg.method` (a child of `parent_run_id` in a sweep); `callbacks`
    join the Trainer's (a sweep's pruning)."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ready = prepare(cfg, tags)  # every input checked before the run exists
    cfg, datamodule = ready.cfg, ready.datamodule
    run_name = run_name or describe(cfg)
    with tracked_run(cfg.tracking, run_name, ready.tags, flatten(to_dict(cfg)), parent_run_id) as run:
        log_dataset(load_dataset(cfg.data.dir)[1], cfg.data.dir, datamodule.data_fingerprint)
        module, provided = build_module(cfg, ready.model, ready.tokenizer, datamodule, ready.sources)
        if provided.clustering is not None:
            log_clustering(provided.clustering, ready.needs.clustering)
        if provided.held_out:
            log_outputs(
                {}, {"held_out_personas.json": {"share": ready.needs.held_out, "personas": sorted(provided.held_out)}}
            )
        method_metrics, method_artifacts = module.outputs()
        log_outputs(method_metrics, method_artifacts)
        mlflow.log_metric("params/trainable", sum(p.numel() for p in module.parameters() if p.requires_grad))
        train = [e for e in datamodule.examples["train"] if e["persona_id"] not in provided.held_out]
        augmented = sum(1 for example in train if example.get("augmented"))
        mlflow.log_metrics({"data/train_dialogues": len(train) - augmented, "data/augmented_dialogues": augmented})
        fit_started = time.perf_counter()
        if module.trainable:
            fit(module, datamodule, cfg, run.info.run_id, callbacks)
        module.to(inference_device(cfg.train))
        eval_started = time.perf_counter()
        metrics, personas, predictions = {}, [], []
        for split in cfg.eval.splits:
            turns, per_persona, means = score(
                generate_split(module, datamodule, split, cfg.eval, cfg.train.precision), cfg.eval.embedder
            )
            metrics |= {f"{split}/{name}": value for name, value in means.items()}
            # a copy before insert_column below adds the split in place
            held_out = per_persona.filter(pl.col("persona_id").is_in(sorted(provided.held_out)))
            personas.append(per_persona.insert_column(0, pl.lit(split).alias("split")))
            predictions.append(turns.insert_column(0, pl.lit(split).alias("split")))
            if provided.held_out:  # the held-out personas apart: `research compare --split held_out/test`
                metrics |= {f"held_out/{split}/{name}": value for name, value in overall(held_out).items()}
                personas.append(held_out.insert_column(0, pl.lit(f"held_out/{split}").alias("split")))
        seconds = {
            "time/setup_s": fit_started - started,
            "time/fit_s": eval_started - fit_started,
            "time/eval_s": time.perf_counter() - eval_started,
        }
        model_id = None
        if module.adapter_kind != "none":
            model_id = log_adapter_model(run, cfg.method, module.adapter_kind, cfg.base_model)
        mlflow.log_metrics(metrics, model_id=model_id)
        mlflow.log_metrics(seconds)
        per_persona_table = pl.concat(personas)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            per_persona_table.write_parquet(out / "per_persona.parquet")
            pl.concat(predictions).write_parquet(out / "predictions.parquet")
            (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            if module.adapter_kind != "none":
                module.save_adapter(out / "adapter")
            mlflow.log_artifacts(tmp)
        seconds["time/total_s"] = time.perf_counter() - started
    # the method's own metrics too (logged with its outputs): e.g. a cross-fitted val score a sweep optimises
    return RunResult(run.info.run_id, run_name, metrics | method_metrics, per_persona_table, seconds)


def train_over_seeds(cfg: ExperimentConfig, seeds: int) -> RunResult:
    """`cfg` trained with seeds cfg.seed, cfg.seed + 1, ..., then their seeds parent
    (`aggregate_seeds`), so `research compare PARENT` compares a method on its seed-averaged
    scores, not on one seed's luck."""
    children = [train_and_evaluate(dataclasses.replace(cfg, seed=cfg.seed + i)).run_id for i in range(seeds)]
    return aggregate_seeds(cfg, children)


def aggregate_seeds(cfg: ExperimentConfig, children: list[str]) -> RunResult:
    """A parent run (tag `aggregate=seeds`) over finished runs of `cfg` that differ only in
    their seed: its `per_persona.parquet` and metrics are each persona's mean across them,
    it logs each test metric's spread (`seeds_std/...`) and the summed cost, and the runs
    become its children (`mlflow.parentRunId`, `seeds.runs`). It holds no adapter: it is
    never an implicit source."""
    experiment = experiment_id(cfg.tracking)  # sets the tracking URI the client below uses
    client = mlflow.tracking.MlflowClient()
    runs = [client.get_run(run_id) for run_id in children]
    first = runs[0]
    seeds = [run.data.params["seed"] for run in runs]
    tags = {k: v for k, v in first.data.tags.items() if not k.startswith("mlflow.")}
    tags |= {"aggregate": "seeds", "seeds.runs": ",".join(children)}
    name = f"{first.data.tags.get('mlflow.runName', describe(cfg))} x{len(runs)} seeds"
    parent_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    try:
        for key, value in first.data.params.items():
            client.log_param(parent_id, key, ",".join(seeds) if key == "seed" else value)
        per_persona = (
            pl.concat(per_persona_table(run_id) for run_id in children)
            .group_by("split", "persona_id")
            .agg(pl.exclude("split", "persona_id").mean())
            .sort("split", "persona_id")
        )
        keys = [k for k in first.data.metrics if k.startswith(("val/", "test/", "held_out/"))]
        metrics = {key: float(np.mean([run.data.metrics[key] for run in runs])) for key in keys}
        spread = {
            f"seeds_std/{key}": float(np.std([run.data.metrics[key] for run in runs], ddof=1))
            for key in keys
            if key.startswith(("test/", "held_out/test/")) and len(runs) > 1
        }
        cost = {"params/trainable": first.data.metrics.get("params/trainable", float("nan"))}
        cost |= {key: sum(run.data.metrics.get(key, 0.0) for run in runs) for key in ("time/fit_s", "time/eval_s")}
        for key, value in (metrics | spread | cost).items():  # cost: the seeds' summed wall time
            client.log_metric(parent_id, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            per_persona.write_parquet(Path(tmp, "per_persona.parquet"))
            client.log_artifact(parent_id, str(Path(tmp, "per_persona.parquet")))
        for run_id in children:
            client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    except BaseException as err:
        client.set_tag(parent_id, "error", f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    seconds = {key: cost[key] for key in ("time/fit_s", "time/eval_s")}
    return RunResult(parent_id, name, metrics | spread, per_persona, seconds)
