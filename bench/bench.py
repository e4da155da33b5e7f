"""Benchmarks, measured side by side in one run on this machine.

- training tokens/s of the unified LoRA LightningModule in the project's Trainer versus a
  plain PyTorch loop on the same model, batches, precision and optimizer
  (`train_vs_plain_loop` = Lightning time / plain time; target <= 1.1), and the plain loop's
  time with eager attention over sdpa's (`train_eager_vs_sdpa`: why TrainConfig.attention's
  auto fits with eager on CPU);
- evaluation turns/s of the project's generation path versus a plain `generate` loop
  (`eval_vs_plain_loop`, same meaning);
- retrieval's evaluation (k=3) versus unified's on the same turns, each side building its
  prompts (retrieval: lookups in the history index, built once per dataset beforehand,
  and the retrieved text) and generating (`retrieval_eval_vs_unified`; target <= 1.5),
  and the same with the compact settings format (`retrieval_settings_eval_vs_unified`).

Every figure printed is also written to bench/results.json (name -> number).
"""

from __future__ import annotations

import bisect
import tempfile
import time
from itertools import accumulate
from pathlib import Path

import lightning.pytorch as L
import torch
from record import arguments, record  # bench/ is on the path when a script here runs
from transformers import get_linear_schedule_with_warmup

from research.data.schema import assign_splits, load_dataset
from research.datamodules.persona import PersonaDataModule, encode_conversation
from research.datamodules.prompts import conversation
from research.evaluation.generation import autocast, generate_split
from research.models.base import load_base
from research.modules import METHODS
from research.modules.base import Source, fit_attention, set_attention
from research.recipes.experiment import load_config
from research.recipes.run import ensure_data_and_base
from research.recipes.train import build_module, make_trainer

TRAIN_STEPS, EVAL_TURNS = 60, 512  # --smoke: 3, 16
REPEATS = 4  # each side's best of 4, the side that goes first alternating, so drift and warm-up hit both


def best_times(sides: dict, repeats: int) -> dict[str, float]:
    """name -> the best of `repeats` timings of its function; who goes first alternates."""
    times = {name: [] for name in sides}
    for r in range(repeats):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            times[name].append(sides[name]())
    return {name: min(values) for name, values in times.items()}


def lora_module(cfg, datamodule):
    L.seed_everything(cfg.seed, verbose=False)
    tokenizer, model = load_base(cfg.base_model)
    return build_module(cfg, model, tokenizer, datamodule)[0]


def tokens_in(batches) -> int:
    return int(sum(b["attention_mask"].sum() for b in batches))


def lightning_train(cfg, datamodule, steps: int) -> float:
    module = lora_module(cfg, datamodule)
    # no validation, so no early stopping on val/loss either (as in many_adapters.py)
    trainer = make_trainer(cfg, max_steps=steps, limit_val_batches=0, enable_progress_bar=False, callbacks=[])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - start


def plain_train(cfg, datamodule, steps: int, attention: str | None = None) -> float:
    """The same steps by hand, with the attention kernel the module fits with (or `attention`)."""
    module = lora_module(cfg, datamodule)
    model = module.model.train()
    set_attention(model, attention or fit_attention(cfg.train.attention, torch.device("cpu")))
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * steps), steps)
    for step, batch in enumerate(datamodule.train_dataloader()):
        if step == steps:
            break
        with autocast(cfg.train.precision, torch.device("cpu")):
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def project_eval(cfg, datamodule, module) -> float:
    start = time.perf_counter()
    generate_split(module, datamodule, "bench", cfg.eval, cfg.train.precision)
    return time.perf_counter() - start


def plain_eval(cfg, datamodule, module) -> float:
    turns = datamodule.eval_turns("bench")
    tokenizer, pad = datamodule.tokenizer, datamodule.tokenizer.pad_token_id
    prompts = sorted((p.to_list() for p in turns["prompt_ids"]), key=len)
    model = module.model.eval()
    start = time.perf_counter()
    with torch.no_grad(), autocast(cfg.train.precision, torch.device("cpu")):
        for i in range(0, len(prompts), cfg.eval.batch_size):
            chunk = prompts[i : i + cfg.eval.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in chunk])[:, None]).long()
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=cfg.eval.max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
            )
            tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return time.perf_counter() - start


def built_prompts(datamodule, dialogues: list[dict], users: dict) -> float:
    """Seconds to build and tokenize the prompt of every assistant turn of `dialogues` with
    the datamodule's context provider (as its prepare_data does)."""
    context, tokenizer = datamodule.context, datamodule.tokenizer
    start = time.perf_counter()
    for row in dialogues:
        user = users[row["persona_id"]]
        for turn in range(len(row["turns"]) // 2):
            encode_conversation(tokenizer, conversation(row, context.system(row, user, turn)))
    return time.perf_counter() - start


def retrieval_vs_unified(cfg, overrides: list[str], datamodule, unified, tmp: Path, repeats: int) -> dict[str, float]:
    """Evaluation seconds of retrieval (k=3, on `unified`'s weights) over unified's, on the
    bench turns, prompts built and generated on each side: with the default verbatim
    exchanges, and with the compact `settings` format."""
    unified.save_adapter(tmp / "adapter")
    tokenizer = datamodule.tokenizer
    bench_ids = {e["dialogue_id"] for e in datamodule.examples["bench"]}
    personas, dialogues = load_dataset(cfg.data.dir)
    users = {row["persona_id"]: row for row in personas.iter_rows(named=True)}
    rows = [
        r
        for r in assign_splits(dialogues, cfg.data.val_fraction, cfg.data.test_fraction).iter_rows(named=True)
        if r["dialogue_id"] in bench_ids
    ]
    sides = {"unified": lambda: built_prompts(datamodule, rows, users) + project_eval(cfg, datamodule, unified)}
    for form in ("verbatim", "settings"):
        retrieval_cfg = load_config(None, [*overrides, "method_args.k=3", f"method_args.format={form}"], "retrieval")
        context = METHODS["retrieval"].needs(retrieval_cfg.method_args).context(retrieval_cfg.data)
        with_context = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed, context=context)
        with_context.prepare_data()  # the token cache and the history index: built once per dataset
        with_context.setup()
        with_context.examples["bench"] = [e for e in with_context.examples["val"] if e["dialogue_id"] in bench_ids]
        sources = {"unified_run": [Source("bench", "unified_lora", tmp)]}
        module = build_module(retrieval_cfg, load_base(cfg.base_model)[1], tokenizer, with_context, sources)[0]
        sides[form] = lambda dm=with_context, m=module: built_prompts(dm, rows, users) + project_eval(cfg, dm, m)
    best = best_times(sides, repeats)
    return {
        "retrieval_eval_s": best["verbatim"],
        "unified_eval_s": best["unified"],
        "retrieval_eval_vs_unified": best["verbatim"] / best["unified"],
        "retrieval_settings_eval_vs_unified": best["settings"] / best["unified"],
    }


def main() -> None:
    args = arguments(__doc__)
    steps, eval_turns, repeats = (3, 16, 1) if args.smoke else (TRAIN_STEPS, EVAL_TURNS, REPEATS)
    cfg = load_config(None, args.overrides, "unified_lora")
    ensure_data_and_base(cfg)
    tokenizer, _ = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    tokens = tokens_in(b for _, b in zip(range(steps), datamodule.train_dataloader(), strict=False))

    train = best_times(
        {
            "lightning": lambda: lightning_train(cfg, datamodule, steps),
            "plain": lambda: plain_train(cfg, datamodule, steps),
        },
        repeats,
    )
    kernels = best_times(
        {kernel: lambda kernel=kernel: plain_train(cfg, datamodule, steps, kernel) for kernel in ("eager", "sdpa")},
        repeats,
    )

    # the first `eval_turns` val turns, as a split of their own so both sides see the same prompts
    val = datamodule.examples["val"]
    datamodule.examples["bench"] = val[
        : bisect.bisect_left(list(accumulate(len(e["turns"]) for e in val)), eval_turns) + 1
    ]
    n_turns = datamodule.eval_turns("bench").height
    module = lora_module(cfg, datamodule)
    evaluation = best_times(
        {
            "project": lambda: project_eval(cfg, datamodule, module),
            "plain": lambda: plain_eval(cfg, datamodule, module),
        },
        repeats,
    )

    with tempfile.TemporaryDirectory() as tmp:
        retrieval = retrieval_vs_unified(cfg, args.overrides, datamodule, module, Path(tmp), repeats)

    lightning_s, plain_s = train["lightning"], train["plain"]
    project_s, plain_eval_s = evaluation["project"], evaluation["plain"]
    results = {
        "train_tokens_per_s_lightning": tokens / lightning_s,
        "train_tokens_per_s_plain_loop": tokens / plain_s,
        "train_vs_plain_loop": lightning_s / plain_s,
        "train_eager_vs_sdpa": kernels["eager"] / kernels["sdpa"],
        "eval_turns_per_s": n_turns / project_s,
        "eval_turns_per_s_plain_loop": n_turns / plain_eval_s,
        "eval_vs_plain_loop": project_s / plain_eval_s,
        **retrieval,
    }
    print(f"training, {steps} steps x batch {cfg.train.batch_size}, {cfg.train.precision} ({tokens} tokens):")
    print(f"  Lightning module  {results['train_tokens_per_s_lightning']:8.0f} tokens/s")
    print(f"  plain loop        {results['train_tokens_per_s_plain_loop']:8.0f} tokens/s")
    print(f"  train_vs_plain_loop = {results['train_vs_plain_loop']:.3f} (target <= 1.1)")
    print(
        f"  train_eager_vs_sdpa = {results['train_eager_vs_sdpa']:.3f} (plain loop; eager is what auto fits with on CPU)"
    )
    print(f"evaluation, {n_turns} turns, batch {cfg.eval.batch_size}, greedy, KV cache:")
    print(f"  project path      {results['eval_turns_per_s']:8.1f} turns/s")
    print(f"  plain loop        {results['eval_turns_per_s_plain_loop']:8.1f} turns/s")
    print(f"  eval_vs_plain_loop = {results['eval_vs_plain_loop']:.3f}")
    print("retrieval (k=3) on the same turns, prompts built and generated:")
    print(f"  retrieval {results['retrieval_eval_s']:.2f} s, unified {results['unified_eval_s']:.2f} s")
    print(f"  retrieval_eval_vs_unified = {results['retrieval_eval_vs_unified']:.3f} (target <= 1.5)")
    print(
        f"  retrieval_settings_eval_vs_unified = {results['retrieval_settings_eval_vs_unified']:.3f} (format=settings)"
    )
    record(results, args.results)


if __name__ == "__main__":
    main()
