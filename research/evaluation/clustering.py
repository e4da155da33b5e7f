"""Persona clustering, its own step and artifact: features, algorithm, k, silhouette, plot.

Features are either description embeddings (what the study used: silhouette 0.022)
or behaviour statistics of each persona's *training* dialogues only: devices used,
preferred values (brightness, set-point, volume...), categorical choices (colour,
genre), reply length and exclamations. Rows are L2-normalised, so cosine similarity
is a dot product (merges use it too). Deterministic for a seed.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from research.config import ClusteringConfig, ConfigError
from research.data.domain import NUMERIC_PARAMETERS
from research.data.schema import load_dataset
from research.evaluation.metrics import extract
from research.models.embedder import load_embedder


@dataclass
class Clustering:
    persona_ids: list[str]
    labels: np.ndarray  # cluster of each persona, 0..k-1
    features: np.ndarray  # L2-normalised rows
    silhouette: float  # cosine silhouette; nan with a single cluster

    @property
    def k(self) -> int:
        return int(self.labels.max()) + 1

    def groups(self) -> dict[str, str]:
        return {p: f"cluster_{c}" for p, c in zip(self.persona_ids, self.labels.tolist(), strict=True)}

    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).tolist()

    def centroids(self) -> np.ndarray:
        """Mean feature of each cluster, L2-normalised."""
        means = np.stack([self.features[self.labels == c].mean(axis=0) for c in range(self.k)])
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _training_replies(datamodule) -> dict[str, list[str]]:
    replies = defaultdict(list)
    for example in datamodule.examples["train"]:
        replies[example["persona_id"]].extend(reference for _, reference in example["turns"])
    return replies


def behaviour_statistics(replies: list[str]) -> dict[str, float]:
    """One persona's behaviour from its replies: per reply, how often it uses each device and
    sets each categorical value, words and exclamations; the mean of each numeric setting."""
    counts: dict[str, float] = defaultdict(float)
    values: dict[str, list[float]] = defaultdict(list)
    for text in replies:
        found = extract(text)
        for device in found.devices:
            counts[f"uses {device}"] += 1
        for device, parameter, value in found.triples:
            if parameter in NUMERIC_PARAMETERS:
                values[f"{device} {parameter}"].append(float(value))
            else:
                counts[f"{device} {parameter}={value}"] += 1
        counts["words"] += len(text.split())
        counts["exclamations"] += text.count("!")
    n = max(len(replies), 1)
    return {**{k: v / n for k, v in counts.items()}, **{k: float(np.mean(v)) for k, v in values.items()}}


def behaviour_features(datamodule) -> np.ndarray:
    """One standardised row per persona (datamodule.persona_ids order), from training replies only."""
    replies = _training_replies(datamodule)
    rows = [behaviour_statistics(replies.get(persona, [])) for persona in datamodule.persona_ids]
    columns = sorted({c for row in rows for c in row})
    table = np.array([[row.get(c, np.nan) for c in columns] for row in rows], dtype=np.float64)
    # a persona that never set a value gets the population's mean for it
    table = np.where(np.isnan(table), np.nanmean(table, axis=0, keepdims=True), table)
    table = np.nan_to_num(table)
    spread = table.std(axis=0)
    return (table - table.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def description_features(datamodule, embedder: str) -> np.ndarray:

    personas, _ = load_dataset(datamodule.cfg.dir)
    text = dict(zip(personas["persona_id"], personas["description"], strict=True))
    model = load_embedder(embedder or "")
    return model.encode([text[p] for p in datamodule.persona_ids], normalize_embeddings=True, convert_to_numpy=True)


def _labels(cfg: ClusteringConfig, features: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans

    if cfg.algorithm == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit_predict(features)
    if cfg.algorithm == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(features)
    labels = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric="cosine").fit_predict(features)
    return np.where(labels < 0, labels.max() + 1, labels)  # noise: one more cluster


def _silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    n_clusters = len(set(labels.tolist()))
    if not 2 <= n_clusters <= len(labels) - 1:
        return float("nan")
    return float(silhouette_score(features, labels, metric="cosine"))


def check_clustering(cfg: ClusteringConfig, personas: int, key: str = "clustering") -> None:
    """Refuse a k that `personas` personas cannot give, naming the key (config keys under
    `key`), before anything is clustered, trained or written."""
    if cfg.algorithm == "dbscan":
        return
    at = f"{key}." if key else ""
    if cfg.k > personas:
        raise ConfigError(f"{at}k: {cfg.k} clusters for {personas} personas (allowed: 1..{personas}, or 0: the best)")
    if not cfg.k and max(2, cfg.k_min) > min(cfg.k_max, personas - 1):
        raise ConfigError(
            f"{at}k_min, {at}k_max: no k in [{cfg.k_min}, {cfg.k_max}] fits {personas} personas (a silhouette "
            f"needs 2..{personas - 1} clusters)"
        )


def cluster_personas(cfg: ClusteringConfig, datamodule) -> Clustering:
    features = (
        behaviour_features(datamodule)
        if cfg.features == "behaviour"
        else description_features(datamodule, cfg.embedder)
    )
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    n = len(features)
    check_clustering(cfg, n)
    if cfg.algorithm == "dbscan":
        labels = _labels(cfg, features, 0)
    elif cfg.k:
        labels = _labels(cfg, features, cfg.k)
    else:
        candidates = range(max(2, cfg.k_min), min(cfg.k_max, n - 1) + 1)
        scored = [
            (_silhouette(features, labels), -k, labels) for k in candidates for labels in [_labels(cfg, features, k)]
        ]
        labels = max(scored, key=lambda s: (s[0], s[1]))[2]
    _, labels = np.unique(labels, return_inverse=True)  # clusters numbered 0..k-1
    return Clustering(list(datamodule.persona_ids), labels, features, _silhouette(features, labels))


def plot(clustering: Clustering, path: Path, title: str) -> None:
    """The personas on the first two principal components of their features, by cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(clustering.features)
    figure, axes = plt.subplots(figsize=(6, 5))
    scatter = axes.scatter(xy[:, 0], xy[:, 1], c=clustering.labels, cmap="tab20", s=18)
    axes.legend(*scatter.legend_elements(), title="cluster", fontsize=7, loc="best")
    axes.set(title=f"{title}\nk={clustering.k}, silhouette={clustering.silhouette:.3f}", xlabel="PC1", ylabel="PC2")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def log_clustering(clustering: Clustering, cfg: ClusteringConfig) -> None:
    """Into the active MLflow run: silhouette and k as metrics; clustering/ holds the
    persona -> cluster table, the sizes and the 2-D plot."""
    import json

    import mlflow

    mlflow.log_metrics({"clustering/silhouette": clustering.silhouette, "clustering/k": clustering.k})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pl.DataFrame({"persona_id": clustering.persona_ids, "cluster": clustering.labels.tolist()}).write_parquet(
            out / "clusters.parquet"
        )
        (out / "sizes.json").write_text(json.dumps(clustering.sizes()))
        plot(clustering, out / "clusters.png", f"{cfg.algorithm} on {cfg.features} features")
        mlflow.log_artifacts(tmp, "clustering")
