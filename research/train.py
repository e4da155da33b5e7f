"""Train and evaluate one method: the recipe behind `research train` and `make train`.

setup     load the base model, build the shared PersonaDataModule and the method's module
fit       Lightning, early stopping on `train.monitor`, best weights restored at the end
evaluate  greedy generation on each eval split; metrics per turn, per persona, overall
log       one MLflow run: config, metrics, curves, per_persona.parquet, predictions.parquet,
          config.yaml and the adapter in PEFT format
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
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
    method: str
    metrics: dict[str, float]  # "val/embedding_similarity", "test/param_f1", ...
    per_persona: pl.DataFrame  # split, persona_id, every metric


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


def fit(module, datamodule, cfg: ExperimentConfig, run_id: str | None) -> None:
    logger = run_id and RunLogger(experiment_name=cfg.tracking.experiment, tracking_uri=cfg.tracking.uri, run_id=run_id)
    make_trainer(cfg, logger).fit(module, datamodule=datamodule)


def train_and_evaluate(cfg: ExperimentConfig) -> RunResult:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    tags = {
        "method": cfg.method,
        "dataset": datamodule.data_fingerprint,
        "base_model": cfg.base_model,
        "base_fingerprint": base_fingerprint(cfg.base_model),
    }
    resolve_sources(cfg.method_args, tags, experiment_id(cfg.tracking))  # before any run or work
    with tracked_run(cfg.tracking, cfg.method, tags, flatten(to_dict(cfg))) as run:
        module = METHODS[cfg.method](model, tokenizer, cfg.train, cfg.method_args, datamodule)
        if module.trainable:
            fit(module, datamodule, cfg, run.info.run_id)
        module.to("cuda" if torch.cuda.is_available() else "cpu")
        metrics, personas, predictions = {}, [], []
        for split in cfg.eval.splits:
            turns, per_persona, overall = score(
                generate_split(module, datamodule, split, cfg.eval, cfg.train.precision), cfg.eval.embedder
            )
            metrics |= {f"{split}/{name}": value for name, value in overall.items()}
            personas.append(per_persona.insert_column(0, pl.lit(split).alias("split")))
            predictions.append(turns.insert_column(0, pl.lit(split).alias("split")))
        mlflow.log_metrics(metrics)
        per_persona_table = pl.concat(personas)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            per_persona_table.write_parquet(out / "per_persona.parquet")
            pl.concat(predictions).write_parquet(out / "predictions.parquet")
            (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            module.save_adapter(out / "adapter")
            mlflow.log_artifacts(tmp)
    return RunResult(run.info.run_id, cfg.method, metrics, per_persona_table)
