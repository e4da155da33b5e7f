"""Analyses that train nothing: comparing finished runs against unified, and clustering
personas on their own (`research compare`, `research cluster`)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import polars as pl

from research.config import ClusteringConfig, DataConfig, TrackingConfig, build, parse_overrides
from research.datamodules.persona import PersonaDataModule
from research.evaluation.clustering import Clustering, cluster_personas, plot
from research.evaluation.statistics import compare
from research.models.base import load_base
from research.tracking.runs import experiment_id
from research.tracking.sources import find_source


def per_persona_table(run_id: str) -> pl.DataFrame:
    return pl.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="per_persona.parquet"))


def compare_runs(
    tracking: TrackingConfig, run_ids: list[str], against: str | None, metric: str, split: str
) -> list[tuple[str, dict]]:
    """(name, statistics) of each run against `against` (default: the latest finished
    unified_lora run on the first run's data and base model)."""
    experiment = experiment_id(tracking)
    runs = [mlflow.get_run(run_id) for run_id in run_ids]
    baseline = against or find_source("unified_lora", "", runs[0].data.tags, experiment, "against").info.run_id
    reference = per_persona_table(baseline)
    return [
        (
            f"{run.data.tags['method']} ({run.info.run_id[:8]})",
            compare(per_persona_table(run.info.run_id), reference, metric, split),
        )
        for run in runs
    ]


def cluster_dataset(base_model: str, overrides: list[str], plot_path: str | Path) -> Clustering:
    """Cluster the personas of `data.dir` (ClusteringConfig keys and data.* keys as
    overrides) and draw them into `plot_path`."""
    values = parse_overrides(overrides)
    data = build(DataConfig, values.pop("data", {}), "data")
    cfg = build(ClusteringConfig, values)
    datamodule = PersonaDataModule(data, load_base(base_model)[0])
    datamodule.prepare_data()
    datamodule.setup()
    clustering = cluster_personas(cfg, datamodule)
    plot(clustering, Path(plot_path), f"{cfg.algorithm} on {cfg.features} features")
    return clustering
