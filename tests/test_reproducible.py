"""The same numbers on any machine, within stated tolerances.

- Thread counts: the same short unified fit with torch on 1 and on 2 threads (float32 sums
  split differently, as on another CPU) gives the same greedy replies and metrics; the val
  loss may move in its last digits (1e-4 relative).
- The shipped base: the reference (tests/data/reproducible.json) was computed on the machine
  it names; CI on another CPU computes the same figures: the base's float32 logits on a fixed
  prompt within 1e-4 (another CPU's kernels sum in another order; that moves a logit by ~1e-6),
  and a short unified fit through the real recipe on the tests' tiny data with val loss within
  1e-4 relative and the same greedy replies on every val and test turn (hence the same
  metrics). bf16 autocast (the former default) rounds differently on CPUs with and without AMX
  units; float32, the default precision now, leaves only the order of sums to differ.

After a new base is shipped: PERSONA_LAB_WRITE_REFERENCE=1 pytest tests/test_reproducible.py
"""

import json
import os
from pathlib import Path

import mlflow
import polars as pl
import torch

from research.models.base import SHIPPED_BASE, load_base
from research.recipes.base import machine
from research.recipes.experiment import load_config
from research.recipes.train import train_and_evaluate

REPOSITORY = Path(__file__).resolve().parents[1]
REFERENCE = REPOSITORY / "tests" / "data" / "reproducible.json"
PROMPT = "<|im_start|>system\nContext: evening, rainy, 9°C, Monday. User: Maya.<|im_end|>\n<|im_start|>user\nLights on.<|im_end|>\n<|im_start|>assistant\n"


def _fit(experiment: list[str], base: str) -> dict:
    """A short unified fit through the real recipe: val loss, every greedy reply, test param F1."""
    cfg = load_config(None, [*experiment, f"base_model={base}"], "unified_lora")
    result = train_and_evaluate(cfg)
    predictions = pl.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions.parquet")
    ).sort("split", "dialogue_id", "turn")
    return {
        "val_loss": mlflow.get_run(result.run_id).data.metrics["val/loss"],
        "replies": predictions["prediction"].to_list(),
        "test/param_f1": result.metrics["test/param_f1"],
    }


def test_a_fit_gives_the_same_replies_whatever_the_thread_count(experiment, base_dir):
    """Another CPU in miniature: float32 sums split over 1 or 2 threads round differently; the
    fit's loss moves in its last digits and its replies and metrics do not."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _fit(experiment, str(base_dir))
        torch.set_num_threads(2)
        two = _fit(experiment, str(base_dir))
    finally:
        torch.set_num_threads(threads)
    assert abs(one["val_loss"] - two["val_loss"]) <= 1e-4 * one["val_loss"]
    assert one["replies"] == two["replies"] and one["test/param_f1"] == two["test/param_f1"]


def test_the_shipped_base_and_a_fit_on_it_give_the_reference_figures(experiment):
    base = str(REPOSITORY / SHIPPED_BASE)
    tokenizer, model = load_base(base)
    with torch.no_grad():
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]
    figures = {"machine": machine(), "logits": [round(float(v), 6) for v in logits[:32]], **_fit(experiment, base)}
    if os.environ.get("PERSONA_LAB_WRITE_REFERENCE") == "1":
        REFERENCE.write_text(json.dumps(figures, indent=1) + "\n")
    reference = json.loads(REFERENCE.read_text())
    where = f"here ({figures['machine']}) against the reference ({reference['machine']})"
    drift = max(abs(a - b) for a, b in zip(figures["logits"], reference["logits"], strict=True))
    assert drift < 1e-4, f"the shipped base's logits differ by {drift:.2g} {where}"
    assert abs(figures["val_loss"] - reference["val_loss"]) <= 1e-4 * reference["val_loss"], where
    assert figures["replies"] == reference["replies"], f"a fit's greedy replies differ {where}"
    assert figures["test/param_f1"] == reference["test/param_f1"]
