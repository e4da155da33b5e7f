"""Analyses that train nothing: comparing finished runs against unified, and clustering
personas on their own (`research compare`, `research cluster`)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import polars as pl

from research.config import ClusteringConfig, ConfigError, DataConfig, TrackingConfig, build, parse_overrides
from research.data.schema import load_dataset
from research.datamodules.persona import PersonaDataModule
from research.evaluation.clustering import Clustering, check_clustering, cluster_personas, plot
from research.evaluation.metrics import METRICS, METRICS_VERSION
from research.evaluation.statistics import StatisticsError, compare, headroom_captured, holm, verdict
from research.models.base import load_base
from research.models.embedder import check_embedders
from research.tracking.runs import experiment_id, find_run
from research.tracking.sources import find_source, lineage_difference


def per_persona_table(run_id: str) -> pl.DataFrame:
    return pl.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="per_persona.parquet"))


def check_comparable(run, baseline) -> None:
    """Refuse to compare runs of another lineage (data, splits, prompt settings, base) or
    generation budget, naming the field."""
    difference = lineage_difference(run, baseline.data.tags)
    budget = [run.data.params.get("eval.max_new_tokens"), baseline.data.params.get("eval.max_new_tokens")]
    if difference is None and budget[0] != budget[1]:
        difference = f"eval.max_new_tokens ({budget[0]!r} vs {budget[1]!r})"
    if difference:
        raise StatisticsError(
            f"run {run.info.run_id[:8]} and baseline {baseline.info.run_id[:8]} differ in {difference}: "
            "their scores are not comparable"
        )


def true_preferences_anchor(run, metric: str, split: str) -> float | None:
    """The simulator's true-preferences anchor on `metric`, from the run's dataset meta.json."""
    meta = Path(run.data.params.get("data.dir", ""), "meta.json")
    if split not in ("test", "held_out/test") or not meta.exists():
        return None
    anchors = json.loads(meta.read_text()).get("oracle_headroom", {})
    if anchors.get("metrics_version") != METRICS_VERSION:
        return None  # scored with other metrics: not comparable with the run's scores
    anchor = anchors["true_preferences"].get(metric)
    # the anchor is a mean over every persona's test split; only a perfect score (every
    # persona at 1) is also the mean over the held-out ones
    return anchor if split == "test" or anchor == 1.0 else None


def compare_runs(
    tracking: TrackingConfig, run_ids: list[str], against: str | None, metric: str, split: str
) -> list[tuple[str, dict]]:
    """(name, statistics) of each run against `against` (default: the latest finished
    unified_lora run on the first run's data and base model). With several runs, p-values
    are Holm-adjusted (`p_holm`); each row carries the study's bar verdict (`missed`: the
    parts of the bar it misses) and the share of the oracle headroom it captures."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: {metric!r} is not a metric (allowed: {', '.join(METRICS)})")
    experiment = experiment_id(tracking)
    client = mlflow.tracking.MlflowClient()
    runs = [find_run(client, experiment, run_id) for run_id in run_ids]
    baseline = (
        find_run(client, experiment, against)
        if against
        else find_source("unified_lora", "", runs[0].data.tags, experiment, "against")
    )
    reference = per_persona_table(baseline.info.run_id)
    rows = []
    for run in runs:
        check_comparable(run, baseline)
        result = compare(per_persona_table(run.info.run_id), reference, metric, split)
        result["headroom_captured"] = headroom_captured(result, true_preferences_anchor(baseline, metric, split))
        rows.append((f"{run.data.tags['method']} ({run.info.run_id[:8]})", result))
    for (_, result), adjusted in zip(rows, holm([r["p_value"] for _, r in rows]), strict=True):
        result["p_holm"] = adjusted
        result["missed"] = verdict(result, adjusted)
    return rows


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")  # what matplotlib writes here


def cluster_dataset(base_model: str, overrides: list[str], plot_path: str | Path) -> Clustering:
    """Cluster the personas of `data.dir` (ClusteringConfig keys and data.* keys as
    overrides) and draw them into `plot_path`."""
    values = parse_overrides(overrides)
    data = build(DataConfig, values.pop("data", {}), "data")
    cfg = build(ClusteringConfig, values)
    plot_path = Path(plot_path)
    if (kind := plot_path.suffix.lstrip(".").lower()) not in PLOT_FORMATS:
        raise ConfigError(f"--plot {plot_path}: {kind or 'no'} image format (allowed: {', '.join(PLOT_FORMATS)})")
    check_clustering(cfg, load_dataset(data.dir)[0].height, "")  # before the data is tokenized and cached
    check_embedders(cfg)
    datamodule = PersonaDataModule(data, load_base(base_model)[0])
    datamodule.prepare_data()
    datamodule.setup()
    clustering = cluster_personas(cfg, datamodule)
    plot(clustering, plot_path, f"{cfg.algorithm} on {cfg.features} features")
    return clustering
