"""Train and evaluate one method: the recipe behind `research train` and `make train`.

setup     load the base model, build the shared PersonaDataModule and the method's module
fit       Lightning, early stopping on `train.monitor`, best weights restored at the end
evaluate  greedy generation on each eval split; metrics per turn, per persona, overall
log       one MLflow run: config, metrics, curves, time/* (setup, fit, eval seconds),
          per_persona.parquet, predictions.parquet, config.yaml and the adapter(s) in PEFT format
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import lightning.pytorch as L
import mlflow
import polars as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar

from research.base_model import base_fingerprint, load_base
from research.config import ExperimentConfig, flatten, to_dict
from research.datamodules.persona import PersonaDataModule
from research.evaluate import generate_split, score
from research.modules import METHODS
from research.sources import resolve_sources
from research.tracking import RunLogger, experiment_id, tracked_run


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

    def __init__(self, monitor: str) -> None:
        self.monitor, self.best_value, self.best_state = monitor, float("inf"), None

    def on_validation_end(self, trainer, module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking and float(value) < self.best_value:
            self.best_value, self.best_state = float(value), module.trainable_state()

    def on_fit_end(self, trainer, module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state, strict=False)


def make_trainer(cfg: ExperimentConfig, logger=None, **overrides) -> L.Trainer:
    """The Trainer every method fits with (benchmarks use it too, so they measure this)."""
    settings = dict(
        max_epochs=cfg.train.max_epochs,
        precision=cfg.train.precision,
        limit_train_batches=cfg.train.limit_train_batches,
        num_sanity_val_steps=0,
        logger=logger or False,
        callbacks=[
            EarlyStopping(cfg.train.monitor, patience=cfg.train.patience),
            RestoreBestWeights(cfg.train.monitor),
            TQDMProgressBar(refresh_rate=10),  # tqdm like every other bar here; rich draws nothing in logs
        ],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    return L.Trainer(**(settings | overrides))


def fit(module, datamodule, cfg: ExperimentConfig, run_id: str | None, callbacks=()) -> None:
    logger = run_id and RunLogger(experiment_name=cfg.tracking.experiment, tracking_uri=cfg.tracking.uri, run_id=run_id)
    trainer = make_trainer(cfg, logger)
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
        predictions = generate_split(module, trainer.datamodule, "val", self.cfg.eval, self.cfg.train.precision)
        for name, value in score(predictions, self.cfg.eval.embedder)[2].items():
            module.log(f"val/{name}", value)


@cache
def _loaded_base(name_or_path: str):
    return load_base(name_or_path)


def base_copy(name_or_path: str):
    """(tokenizer, a fresh copy of the model): the base is read once per process, so a
    sweep worker does not reload it for every trial (methods wrap the model in place)."""
    tokenizer, model = _loaded_base(name_or_path)
    return tokenizer, copy.deepcopy(model)


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
    tokenizer, model = base_copy(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    tags = {
        **(tags or {}),
        "method": cfg.method,
        "dataset": datamodule.data_fingerprint,
        "base_model": cfg.base_model,
        "base_fingerprint": base_fingerprint(cfg.base_model),
    }
    resolve_sources(cfg.method_args, tags, experiment_id(cfg.tracking))  # before any run or work
    with tracked_run(cfg.tracking, run_name or cfg.method, tags, flatten(to_dict(cfg)), parent_run_id) as run:
        module = METHODS[cfg.method](model, tokenizer, cfg.train, cfg.method_args, datamodule)
        fit_started = time.perf_counter()
        if module.trainable:
            fit(module, datamodule, cfg, run.info.run_id, callbacks)
        module.to("cuda" if torch.cuda.is_available() else "cpu")
        eval_started = time.perf_counter()
        metrics, personas, predictions = {}, [], []
        for split in cfg.eval.splits:
            turns, per_persona, overall = score(
                generate_split(module, datamodule, split, cfg.eval, cfg.train.precision), cfg.eval.embedder
            )
            metrics |= {f"{split}/{name}": value for name, value in overall.items()}
            personas.append(per_persona.insert_column(0, pl.lit(split).alias("split")))
            predictions.append(turns.insert_column(0, pl.lit(split).alias("split")))
        seconds = {
            "time/setup_s": fit_started - started,
            "time/fit_s": eval_started - fit_started,
            "time/eval_s": time.perf_counter() - eval_started,
        }
        mlflow.log_metrics(metrics | seconds)
        per_persona_table = pl.concat(personas)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            per_persona_table.write_parquet(out / "per_persona.parquet")
            pl.concat(predictions).write_parquet(out / "predictions.parquet")
            (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            module.save_adapter(out / "adapter")
            mlflow.log_artifacts(tmp)
        seconds["time/total_s"] = time.perf_counter() - started
    return RunResult(run.info.run_id, run_name or cfg.method, metrics, per_persona_table, seconds)
