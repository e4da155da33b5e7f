"""`research data generate`: the simulated dataset, its oracle headroom scored with the
project's metrics."""

from __future__ import annotations

from pathlib import Path

from research.data.generate import SimulatorConfig, generate
from research.evaluation.generation import score
from research.evaluation.metrics import METRICS_VERSION


def generate_dataset(cfg: SimulatorConfig, out: str | Path = "data", embedder: str = "", neutral: bool = True) -> dict:
    return generate(cfg, out, lambda predictions: score(predictions, embedder)[2], METRICS_VERSION, neutral)
