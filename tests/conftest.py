"""Shared fixtures: a tiny simulated dataset and a tiny base model, built once per session
with the real code paths (simulator, tokenizer training, Llama pretraining)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# big and trained enough to answer in words that differ from prompt to prompt (a base that
# answers every prompt with the same blanks would let equivalence tests pass vacuously)
TINY_BASE = dict(
    vocab_size=320,
    hidden_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=128,
    epochs=20,
    batch_size=16,
    lr=1e-2,
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from research.data.generate import SimulatorConfig
    from research.recipes.data import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(SimulatorConfig(personas=6, dialogues=6, neutral_personas=12, neutral_dialogues=6), root)
    return root


@pytest.fixture(scope="session")
def base_dir(data_root, tmp_path_factory):
    from research.models.base import BaseConfig, pretrain_from_dataset

    out = tmp_path_factory.mktemp("models") / "base"
    pretrain_from_dataset(data_root / "neutral", out, BaseConfig(**TINY_BASE))
    return out


def overrides(data_root, base_dir, store) -> list[str]:
    """Overrides for a fast experiment on the tiny data, tracked in an MLflow store under `store`."""
    return [
        f"base_model={base_dir}",
        f"data.dir={data_root / 'personas'}",
        f"data.cache_dir={store / 'cache'}",
        f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifacts={store / 'artifacts'}",
        "train.max_epochs=1",
        "train.batch_size=4",
        "eval.max_new_tokens=16",
    ]


@pytest.fixture
def experiment(data_root, base_dir, tmp_path):
    """A fresh MLflow store per test."""
    return overrides(data_root, base_dir, tmp_path)


@pytest.fixture(scope="session")
def source_runs(data_root, base_dir, tmp_path_factory):
    """One store holding a finished unified_lora and per_persona_lora run, for the methods
    built on them (hybrid, constrained, merges): (overrides, {method: run id})."""
    from research.recipes.experiment import load_config
    from research.recipes.train import train_and_evaluate

    experiment = overrides(data_root, base_dir, tmp_path_factory.mktemp("store"))
    runs = {
        m: train_and_evaluate(load_config(None, experiment, m)).run_id for m in ("unified_lora", "per_persona_lora")
    }
    return experiment, runs


def evaluated_requests(cfg, run_id: str, personas: list[str]) -> tuple[list[dict], list[str]]:
    """For each persona, its first test dialogue's first user turn as a serving request, and
    the answer the run's evaluation generated for that turn."""
    import mlflow
    import polars as pl

    from research.data.schema import load_dataset

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet")
    predictions = pl.read_parquet(path).filter(pl.col("split") == "test", pl.col("turn") == 0)
    _, dialogues = load_dataset(cfg.data.dir)
    requests, expected = [], []
    for persona in personas:
        row = predictions.filter(pl.col("persona_id") == persona).sort("dialogue_id").row(0, named=True)
        dialogue = dialogues.filter(pl.col("dialogue_id") == row["dialogue_id"]).row(0, named=True)
        requests.append({**dialogue, "turns": dialogue["turns"][:1]})
        expected.append(row["prediction"])
    return requests, expected
