"""Many adapters in one job, measured side by side in one run on this machine.

- training one epoch of all per-persona adapters (the group engine, one loop) versus one
  unified LoRA on the same dialogues (`per_persona_train_vs_unified`, target <= 1.3), and
  the naive way, a fresh base load, PEFT model and Trainer per persona, timed on a
  sample of personas and scaled to all of them (`naive_per_persona_train_vs_unified`);
- generating the test split with every persona's adapter in mixed batches versus the
  unified adapter (`per_persona_eval_vs_unified`, target <= 1.5); both sides hold
  freshly initialised adapters (B = 0), so they generate the very same tokens and the
  ratio is the adapter path's cost alone;
- training one epoch of every persona's learned prompt in one job (`prompt_persona`, the
  soft-prompt engine, on a frozen unified LoRA) versus one unified LoRA
  (`prompt_persona_train_vs_unified`, target <= 1.3);
- peak resident memory of each training side (`*_peak_rss_mb`).

Each measurement runs in a fresh process (so peak memory is its own); sides alternate.
Every figure printed is also written to bench/results.json.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from record import arguments, record  # bench/ is on the path when a script here runs

from research.recipes.train import build_module

NAIVE_SAMPLE = 6  # personas trained the naive way; the time is scaled to all personas (--smoke: 2)
REPEATS = 2  # --smoke: 1


def _setup(overrides, method):
    import lightning.pytorch as L

    from research.datamodules.persona import PersonaDataModule
    from research.models.base import load_base
    from research.recipes.experiment import load_config

    cfg = load_config(None, [*overrides, "train.max_epochs=1"], method)
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    if not hasattr(cfg.method_args, "unified_run"):
        return cfg, datamodule, build_module(cfg, model, tokenizer, datamodule)[0]
    # a method on the frozen unified model: a freshly initialised unified adapter to build on
    from research.modules.base import Source

    unified_cfg = load_config(None, [*overrides, "train.max_epochs=1"], "unified_lora")
    unified = build_module(unified_cfg, load_base(cfg.base_model)[1], tokenizer, datamodule)[0]
    with tempfile.TemporaryDirectory() as tmp:
        unified.save_adapter(Path(tmp, "adapter"))
        sources = {"unified_run": [Source("bench", "unified_lora", Path(tmp))]}
        return cfg, datamodule, build_module(cfg, model, tokenizer, datamodule, sources)[0]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_epoch(overrides, method) -> tuple[float, float]:
    """(seconds for one training epoch, peak RSS in MB) in this process."""
    from research.recipes.train import make_trainer

    cfg, datamodule, module = _setup(overrides, method)
    trainer = make_trainer(cfg, limit_val_batches=0, enable_progress_bar=False, callbacks=[])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - start, _peak_mb()


def naive_train(overrides, sample: int) -> tuple[float, int]:
    """Seconds to train `sample` personas the naive way (load, wrap, Trainer, fit each), and
    the number of personas in the dataset."""
    import lightning.pytorch as L

    from research.models.base import load_base
    from research.recipes.train import make_trainer

    cfg, datamodule, _ = _setup(overrides, "unified_lora")
    train = datamodule.examples["train"]
    start = time.perf_counter()
    for persona in datamodule.persona_ids[:sample]:
        L.seed_everything(cfg.seed, verbose=False)
        tokenizer, model = load_base(cfg.base_model)
        datamodule.examples["train"] = [e for e in train if e["persona_id"] == persona]
        module = build_module(cfg, model, tokenizer, datamodule)[0]
        make_trainer(cfg, limit_val_batches=0, enable_progress_bar=False, callbacks=[]).fit(
            module, datamodule=datamodule
        )
    return time.perf_counter() - start, len(datamodule.persona_ids)


def generate_test(overrides, method) -> tuple[float, int]:
    """(seconds to generate every test turn, turns) with freshly initialised adapters."""
    from research.evaluation.generation import generate_split

    cfg, datamodule, module = _setup(overrides, method)
    start = time.perf_counter()
    turns = generate_split(module, datamodule, "test", cfg.eval, cfg.train.precision).height
    return time.perf_counter() - start, turns


def in_fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    from research.recipes.experiment import load_config
    from research.recipes.run import ensure_data_and_base

    args = arguments(__doc__)
    overrides = args.overrides
    naive_sample, repeats = (2, 1) if args.smoke else (NAIVE_SAMPLE, REPEATS)
    ensure_data_and_base(load_config(None, overrides, "unified_lora"))
    train = {"unified_lora": [], "per_persona_lora": [], "prompt_persona": []}
    evaluate = {"unified_lora": [], "per_persona_lora": []}
    for _ in range(repeats):
        for method in train:
            train[method].append(in_fresh_process(train_epoch, overrides, method))
            if method in evaluate:
                evaluate[method].append(in_fresh_process(generate_test, overrides, method))
    naive_s, personas = in_fresh_process(naive_train, overrides, naive_sample)

    unified_s = min(s for s, _ in train["unified_lora"])
    per_persona_s = min(s for s, _ in train["per_persona_lora"])
    prompt_persona_s = min(s for s, _ in train["prompt_persona"])
    naive_all_s = naive_s / naive_sample * personas
    unified_eval_s = min(s for s, _ in evaluate["unified_lora"])
    per_persona_eval_s = min(s for s, _ in evaluate["per_persona_lora"])
    turns = evaluate["unified_lora"][0][1]
    results = {
        "unified_train_epoch_s": unified_s,
        "per_persona_train_epoch_s": per_persona_s,
        "naive_per_persona_train_epoch_s": naive_all_s,
        "per_persona_train_vs_unified": per_persona_s / unified_s,
        "prompt_persona_train_epoch_s": prompt_persona_s,
        "prompt_persona_train_vs_unified": prompt_persona_s / unified_s,
        "naive_per_persona_train_vs_unified": naive_all_s / unified_s,
        "unified_eval_test_s": unified_eval_s,
        "per_persona_eval_test_s": per_persona_eval_s,
        "per_persona_eval_vs_unified": per_persona_eval_s / unified_eval_s,
        "unified_train_peak_rss_mb": max(m for _, m in train["unified_lora"]),
        "per_persona_train_peak_rss_mb": max(m for _, m in train["per_persona_lora"]),
        "prompt_persona_train_peak_rss_mb": max(m for _, m in train["prompt_persona"]),
    }
    print(f"training one epoch, {personas} personas:")
    print(f"  unified LoRA (one adapter)          {unified_s:8.1f} s")
    print(f"  per-persona, group engine (1 loop)  {per_persona_s:8.1f} s")
    print(f"  per-persona, naive ({naive_sample} timed, scaled) {naive_all_s:8.1f} s")
    print(f"  learned prompt per persona (1 loop) {prompt_persona_s:8.1f} s")
    print(f"  per_persona_train_vs_unified       = {results['per_persona_train_vs_unified']:.3f} (target <= 1.3)")
    print(f"  naive_per_persona_train_vs_unified = {results['naive_per_persona_train_vs_unified']:.2f}")
    print(f"  prompt_persona_train_vs_unified    = {results['prompt_persona_train_vs_unified']:.3f} (target <= 1.3)")
    print(f"generating the test split ({turns} turns), mixed-adapter batches:")
    print(f"  unified {unified_eval_s:.1f} s, per-persona {per_persona_eval_s:.1f} s")
    print(f"  per_persona_eval_vs_unified        = {results['per_persona_eval_vs_unified']:.3f} (target <= 1.5)")
    print(
        f"peak RSS while training: unified {results['unified_train_peak_rss_mb']:.0f} MB, "
        f"{personas} adapters {results['per_persona_train_peak_rss_mb']:.0f} MB"
    )
    record(results, args.results)


if __name__ == "__main__":
    main()
