"""A new persona's adapter: hyper_lora's hypernetwork versus training that persona's own LoRA,
side by side in one run on this machine.

The new persona is one that hyper_lora's persona-level split holds out of training
(`method_args.held_out`, the default 0.2), so the hypernetwork has never seen it.
- hypernetwork (`new_persona_hyper_lora_adapter_s`): the persona's profile row (its
  description embedded, the behaviour statistics of its history, standardised with the
  other personas' statistics, computed beforehand), through the encoder and the generated
  factors, written as a standard PEFT LoRA directory. No training step; the embedder and
  the hypernetwork are loaded beforehand, as in a process that serves them. The
  hypernetwork's weights do not change its cost, so it is not trained here.
- its own LoRA (`new_persona_lora_fit_s`): what per_persona_lora does for one persona, a
  LoRA (the unified settings) fitted on that persona's training dialogues with the usual
  Trainer, `train.max_epochs` epochs with early stopping on its val dialogues, then saved
  as a PEFT directory. The base is loaded beforehand; each fit starts from a fresh copy.
`new_persona_hyper_lora_speedup` = LoRA fit time / hypernetwork time (target >= 30; the
Profile-to-PEFT line of work reports ~33x). Each side's best of 3, the side that goes
first alternating. Every figure printed is also written to bench/results.json.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from record import arguments, record  # bench/ is on the path when a script here runs

from bench import best_times
from research.data.schema import load_dataset
from research.datamodules.persona import PersonaDataModule
from research.evaluation.clustering import behaviour_statistics
from research.models.base import load_base
from research.models.embedder import load_embedder
from research.modules.group_lora import write_adapter
from research.recipes.experiment import load_config
from research.recipes.logs import quiet_libraries
from research.recipes.run import ensure_data_and_base
from research.recipes.train import build_module, make_trainer

REPEATS = 3  # --smoke: 1


def _datamodule(cfg, tokenizer) -> PersonaDataModule:
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


class BehaviourScale:
    """The behaviour columns and their standardisation (behaviour_features' imputation and
    scaling) from every persona but `exclude`: a new persona's row is made against them."""

    def __init__(self, datamodule, exclude: str) -> None:
        replies: dict[str, list[str]] = {}
        for example in datamodule.examples["train"]:
            replies.setdefault(example["persona_id"], []).extend(reply for _, reply in example["turns"])
        rows = [behaviour_statistics(r) for p, r in replies.items() if p != exclude]
        self.columns = sorted({c for row in rows for c in row})
        table = np.array([[row.get(c, np.nan) for c in self.columns] for row in rows], dtype=np.float64)
        self.mean = np.nan_to_num(np.nanmean(table, axis=0))
        table = np.nan_to_num(np.where(np.isnan(table), self.mean, table))
        spread = table.std(axis=0)
        self.spread = np.where(spread > 0, spread, 1.0)

    def row(self, statistics: dict[str, float]) -> np.ndarray:
        raw = np.array([statistics.get(c, m) for c, m in zip(self.columns, self.mean, strict=True)])
        return (raw - self.mean) / self.spread


def main() -> None:
    quiet_libraries()
    args = arguments(__doc__)
    repeats = 1 if args.smoke else REPEATS
    hyper_cfg = load_config(None, args.overrides, "hyper_lora")
    lora_cfg = load_config(None, args.overrides, "unified_lora")
    ensure_data_and_base(hyper_cfg)
    L.seed_everything(hyper_cfg.seed, verbose=False)
    tokenizer, base = load_base(hyper_cfg.base_model)

    hyper_data = _datamodule(hyper_cfg, tokenizer)
    module, provided = build_module(hyper_cfg, copy.deepcopy(base), tokenizer, hyper_data, sources={})
    module.eval()
    persona = sorted(provided.held_out)[0]

    # that persona's dialogues alone, as a per-persona fit sees them
    lora_data = _datamodule(lora_cfg, tokenizer)
    for split in ("train", "val"):
        lora_data.examples[split] = [e for e in lora_data.examples[split] if e["persona_id"] == persona]
    dialogues = len(lora_data.examples["train"])

    description = load_dataset(hyper_cfg.data.dir)[0].filter(pl.col("persona_id") == persona)["description"][0]
    history = [reply for e in hyper_data.examples["train"] if e["persona_id"] == persona for _, reply in e["turns"]]
    behaviour = BehaviourScale(hyper_data, exclude=persona)
    model = load_embedder(hyper_cfg.method_args.embedder)  # loaded by build_module already (once per process)

    with tempfile.TemporaryDirectory() as tmp:

        def hypernetwork() -> float:
            start = time.perf_counter()
            embedding = model.encode([description], normalize_embeddings=True, convert_to_numpy=True)[0]
            row = np.hstack([embedding, behaviour.row(behaviour_statistics(history))])
            factors = module.persona_adapter(torch.from_numpy(row).float())  # no training step
            write_adapter(factors, Path(tmp, "hyper_lora", persona), module.base_name)
            return time.perf_counter() - start

        def lora_fit() -> float:
            L.seed_everything(lora_cfg.seed, verbose=False)
            model = copy.deepcopy(base)
            start = time.perf_counter()
            lora = build_module(lora_cfg, model, tokenizer, lora_data, sources={})[0]
            make_trainer(lora_cfg, enable_progress_bar=False).fit(lora, datamodule=lora_data)
            lora.save_adapter(Path(tmp, "lora", persona))
            return time.perf_counter() - start

        times = best_times({"hypernetwork": hypernetwork, "lora_fit": lora_fit}, repeats)
        loadable = all((Path(tmp, side, persona) / "adapter_config.json").exists() for side in ("hyper_lora", "lora"))
    assert loadable, "both sides write a PEFT adapter directory"

    results = {
        "new_persona_hyper_lora_adapter_s": times["hypernetwork"],
        "new_persona_lora_fit_s": times["lora_fit"],
        "new_persona_hyper_lora_speedup": times["lora_fit"] / times["hypernetwork"],
    }
    print(f"a new persona's adapter ({persona}, held out of hyper_lora's training; {dialogues} training dialogues):")
    print(f"  hyper_lora: profile -> hypernetwork -> PEFT dir  {times['hypernetwork']:8.2f} s")
    print(f"  its own LoRA: fit ({lora_cfg.train.max_epochs} epochs max) + save {times['lora_fit']:8.2f} s")
    print(f"  new_persona_hyper_lora_speedup = {results['new_persona_hyper_lora_speedup']:.1f}x (target >= 30)")
    record(results, args.results)


if __name__ == "__main__":
    main()
