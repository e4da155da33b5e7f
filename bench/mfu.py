"""Model-FLOPs utilisation of LoRA training on this CPU, and where one step's time goes.

- Peak: dense matrix multiplies in torch at the model's widths ((tokens x hidden) @
  (hidden x hidden | intermediate)), bf16 and fp32, with the thread count the trainer uses;
  the best of a few shapes is the peak (`peak_gflops_bf16`, `peak_gflops_fp32`).
- Model FLOPs per trained token: the frozen base runs forward (2 N) and backward through
  its activations (2 N), LoRA's factors forward, backward and weight gradients (6 N_lora),
  plus attention's scores and mixing (forward and backward: 6 x layers x context x
  hidden), where N counts the base's matmul weights (embeddings excluded, the LM head
  included). The usual 6 N of full fine-tuning would overstate a frozen base by half.
- MFU = model FLOPs per token x trained tokens/s / peak, for unified LoRA and for the group
  engine with every persona's adapter (per_persona_lora), on the default base, in the
  trainer's precision (bf16-mixed: against the bf16 peak); and unified LoRA on SmolLM2
  (`smollm2_*`, data/small) when models/smollm2-135m-instruct and data/small exist.
- Profile: one training step of unified LoRA under torch.profiler, CPU time by kind of op
  (attention, matmuls, LoRA gathers; the optimizer step as a whole; the rest) beside the
  step's wall time (`profile_*_share`).

Every figure printed is also written to bench/results.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from record import arguments, record
from torch.profiler import ProfilerActivity, profile, record_function

from bench import lightning_train, lora_module, tokens_in  # bench/ is on the path when a script here runs
from research.datamodules.persona import PersonaDataModule
from research.evaluation.generation import autocast
from research.models.base import load_base
from research.modules.base import fit_attention, set_attention
from research.recipes.experiment import load_config
from research.recipes.run import ensure_data_and_base

STEPS = 30  # --smoke: 2

# op name fragments -> kind, first match wins (profile)
KINDS = (
    ("attention", ("attention", "softmax", "bmm", "baddbmm")),
    ("lora_gather", ("index_select", "gather", "index", "embedding_dense")),
    ("matmul", ("mm", "matmul", "linear", "addmm")),
)


def peak_gflops(
    dtype: torch.dtype, hidden: int, intermediate: int, tokens: int = 512, repeats: int = 20, device="cpu"
) -> float:
    best = 0.0
    for n in (hidden, intermediate, 4 * hidden):
        a = torch.randn(tokens, hidden, dtype=dtype, device=device)
        b = torch.randn(hidden, n, dtype=dtype, device=device)
        for _ in range(3):  # warm up the kernels
            a @ b
        synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize()  # a GPU runs the multiplies after the calls return
        best = max(best, 2 * tokens * hidden * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(module, context: int) -> float:
    model, config = module.model, module.model.config
    # a token goes through its own group's LoRA only (the group engine stacks every persona's)
    groups = len(getattr(module, "group_names", None) or [None])
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) / groups
    base = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "lora_" not in n and "embed" not in n)
    if getattr(config, "tie_word_embeddings", False):
        base += config.vocab_size * config.hidden_size  # the tied LM head is still a matmul
    attention = 6 * config.num_hidden_layers * context * config.hidden_size
    return 4 * base + 6 * lora + attention


def profile_step(module, datamodule, precision: str, attention: str) -> dict[str, float]:
    """CPU time by kind of op in one step, as a fit runs it (its attention kernel)."""
    model = module.model.train()
    set_attention(model, fit_attention(attention, torch.device("cpu")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = iter(datamodule.train_dataloader())
    next(batches)  # the first batch pays for worker start-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        loss.backward()
        with record_function("optimizer_step"):  # on CPU, AdamW runs as plain mul_/add_/lerp_ ops
            optimizer.step()
        optimizer.zero_grad()
        wall = time.perf_counter() - start
    by_kind = dict.fromkeys([k for k, _ in KINDS], 0.0)
    events = prof.key_averages()
    for event in events:
        name = event.key.lower()
        kind = next((k for k, parts in KINDS if any(p in name for p in parts)), None)
        if kind and name.startswith("aten::"):  # self time: an op's callees are not counted again
            by_kind[kind] += event.self_cpu_time_total / 1e6
    by_kind["optimizer"] = sum(e.cpu_time_total for e in events if e.key == "optimizer_step") / 1e6
    shares = {f"profile_{kind}_share": seconds / wall for kind, seconds in by_kind.items()}
    shares["profile_data_loading_share"] = (loaded - start) / wall
    shares["profile_rest_share"] = max(0.0, 1 - sum(shares.values()))
    shares["profile_step_s"] = wall
    return shares


SMOLLM2 = ["base_model=models/smollm2-135m-instruct", "data.dir=data/small/personas"]  # when converted


def measure(overrides: list[str], steps: int, methods: tuple[str, ...], prefix: str = "") -> dict[str, float]:
    cfg = load_config(None, overrides, "unified_lora")
    ensure_data_and_base(cfg)
    tokenizer, base = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    batches = [b for _, b in zip(range(steps), datamodule.train_dataloader(), strict=False)]
    tokens = tokens_in(batches)
    context = max(b["input_ids"].shape[1] for b in batches)
    widths = base.config.hidden_size, base.config.intermediate_size
    results = {
        f"{prefix}peak_gflops_bf16": peak_gflops(torch.bfloat16, *widths),
        f"{prefix}peak_gflops_fp32": peak_gflops(torch.float32, *widths),
    }
    peak = results[f"{prefix}peak_gflops_{'bf16' if cfg.train.precision.startswith('bf16') else 'fp32'}"]
    for method in methods:
        method_cfg = load_config(None, overrides, method)
        module = lora_module(method_cfg, datamodule)
        per_token = flops_per_token(module, context)
        seconds = lightning_train(method_cfg, datamodule, steps)
        datamodule.group_of = None  # the next method sets its own groups
        results[f"{prefix}{method}_train_tokens_per_s"] = tokens / seconds
        results[f"{prefix}{method}_model_gflops_per_token"] = per_token / 1e9
        results[f"{prefix}{method}_mfu"] = per_token * tokens / seconds / (peak * 1e9)
        if method == "unified_lora" and not prefix:
            results |= profile_step(module, datamodule, cfg.train.precision, cfg.train.attention)
    return results


def main() -> None:
    args = arguments(__doc__)
    steps = 2 if args.smoke else STEPS
    results = {"threads": torch.get_num_threads()}
    results |= measure(list(args.overrides), steps, ("unified_lora", "per_persona_lora"))
    smollm2 = not args.smoke and Path(SMOLLM2[0].split("=")[1]).exists() and Path(SMOLLM2[1].split("=")[1]).exists()
    if smollm2:
        results |= measure([*args.overrides, *SMOLLM2], steps, ("unified_lora",), "smollm2_")
    print(
        f"{results['threads']} threads; peak GFLOP/s at the default base's widths: "
        f"bf16 {results['peak_gflops_bf16']:.1f}, fp32 {results['peak_gflops_fp32']:.1f}"
    )
    for key in [k for k in results if k.endswith("_mfu")]:
        name = key.removesuffix("_mfu")
        print(
            f"{name}: {results[f'{name}_train_tokens_per_s']:.0f} tokens/s x "
            f"{results[f'{name}_model_gflops_per_token'] * 1e3:.1f} MFLOP/token -> MFU {results[key]:.1%}"
        )
    shares = ", ".join(
        f"{k.removeprefix('profile_').removesuffix('_share')} {v:.0%}"
        for k, v in results.items()
        if k.endswith("_share")
    )
    print(f"one unified step ({results['profile_step_s'] * 1e3:.0f} ms), CPU time by kind: {shares}")
    record(results, args.results)


if __name__ == "__main__":
    main()
