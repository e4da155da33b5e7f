"""Evaluation: greedy generation for every assistant turn of a split, then the metrics
per turn, per persona and overall."""

from __future__ import annotations

import contextlib

import polars as pl
import torch
from tqdm.auto import tqdm

from research.config import EvalConfig
from research.evaluation.metrics import overall, parameter_recall, per_persona, score_turns


def autocast(precision: str, device: torch.device):
    """bf16 autocast when training used it (train.precision)."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def generate_split(module, datamodule, split: str, cfg: EvalConfig, precision: str) -> pl.DataFrame:
    """persona_id, dialogue_id, turn, reference, prediction for each assistant turn."""
    turns = datamodule.eval_turns(split)
    predictions: list[str] = [""] * turns.height
    module.eval()
    with autocast(precision, module.device), tqdm(total=turns.height, desc=f"generate {split}", unit="turn") as bar:
        for index, batch in datamodule.eval_batches(turns, cfg.batch_size):
            batch = {k: v.to(module.device) for k, v in batch.items()}
            new_tokens = module.generate(batch, cfg.max_new_tokens)
            for i, text in zip(
                index, datamodule.tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
            ):
                predictions[i] = text.strip()
            bar.update(len(index))
    return turns.drop("prompt_ids").with_columns(prediction=pl.Series(predictions, dtype=pl.String))


def score(predictions: pl.DataFrame, embedder: str = "") -> tuple[pl.DataFrame, pl.DataFrame, dict[str, float]]:
    """(turns with metrics, per-persona means, overall means over personas and, pooled over
    turns, each parameter's recall as `param_recall/<device>.<parameter>`)."""
    references, replies = predictions["reference"].to_list(), predictions["prediction"].to_list()
    turns = pl.concat([predictions, score_turns(references, replies, embedder or None)], how="horizontal")
    personas = per_persona(turns)
    by_parameter = {f"param_recall/{name}": value for name, value in parameter_recall(references, replies).items()}
    return turns, personas, overall(personas) | by_parameter
