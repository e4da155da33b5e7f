"""The GPU check (`make gpu-check`): what the study's scale costs on one accelerator, with
nothing to download, in at most a few minutes of a lent machine.

The model is Qwen2.5-0.5B-Instruct's architecture and size (its config, written out below)
with random weights: time and memory depend on the shapes, not on the values. With a
`base_model=DIR` override it is that local directory instead (e.g. the converted SmolLM2,
models/smollm2-135m-instruct). Batches are random token ids of a fixed width. The project's
modules and Trainer run it (train.precision=bf16-mixed, on the config's devices):
- unified LoRA training: tokens/s and model-FLOPs utilisation (bench/mfu.py's model FLOPs
  per token; the peak is the GPU's datasheet bf16 figure where known, else a matmul peak
  measured at the model's widths, `peak_is_datasheet` saying which);
- the group engine with 200 personas' adapters against unified
  (`per_persona_train_vs_unified`, time ratio): the study paid ~100x unified's GPU hours
  for 200 per-persona adapters, one job each;
- generation with 200 adapters in one batch (one request per persona) against one adapter:
  turns/s (`per_persona_generate_vs_unified`);
- peak memory of each phase (GPU memory allocated; on the CPU, the process's peak RSS so far).
Writes bench/results_gpu.json. `--smoke`: a tiny model of the same family on this machine,
so the script cannot rot unnoticed (`make test` runs it); its figures mean nothing.
"""

from __future__ import annotations

import copy
import resource
import time

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from mfu import flops_per_token, peak_gflops  # bench/ is on the path when a script here runs
from record import RESULTS, arguments, record
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, Qwen2Config

from research.evaluation.generation import autocast
from research.models.base import load_base
from research.models.devices import inference_device
from research.modules import METHODS
from research.modules.base import Provided
from research.recipes.experiment import load_config
from research.recipes.logs import quiet_libraries
from research.recipes.train import make_trainer

# Qwen2.5-0.5B-Instruct's config.json (the shapes that matter)
QWEN_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TINY = dict(QWEN_05B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
# dense bf16 TFLOP/s, NVIDIA datasheets (first match of the device name wins)
DATASHEET_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1))
PERSONAS = 200
# batch, width, timed steps (after WARMUP untimed ones), prompt width and new tokens in generation
FULL, SMOKE = (16, 256, 40, 64, 64), (4, 32, 2, 8, 4)
WARMUP = 5


class Specials:
    """The token ids generation needs, for a model without a tokenizer (random weights)."""

    def __init__(self, vocab_size: int) -> None:
        self.eos_token_id, self.pad_token_id = vocab_size - 1, 0


def base_model(overrides: list[str], smoke: bool, device: torch.device):
    """(tokenizer or its stand-in, model on `device`, name)."""
    if any(o.startswith("base_model=") for o in overrides):
        name = load_config(None, overrides, "unified_lora").base_model
        tokenizer, model = load_base(name)
        return tokenizer, model.to(device), name
    config = Qwen2Config(**(TINY if smoke else QWEN_05B))
    with torch.device(device):  # initialised where it runs: 0.5B random weights in seconds, not a minute
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return Specials(config.vocab_size), model, "Qwen2.5-0.5B-sized, random weights" if not smoke else "tiny Qwen2"


def batches(vocab: int, batch: int, width: int, steps: int, personas: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        ids = torch.randint(1, vocab - 1, (batch, width), generator=generator)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": ids.clone(),
                "group_idx": torch.randint(0, personas, (batch,), generator=generator),
            }
        )
    return out


class StepClock(Callback):
    """Seconds of the training steps after the first `warmup` (CUDA start-up, kernel choice)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.seconds = warmup, None, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.started = time.perf_counter()
        elif self.started is not None:
            self.seconds = time.perf_counter() - self.started


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def module_for(method: str, cfg, tokenizer, model):
    """`method`'s module on a fresh copy of `model`, every persona its own group."""
    personas = [f"persona_{i:03d}" for i in range(PERSONAS)]
    provided = Provided(persona_ids=personas, trained_personas=set(personas), groups={p: p for p in personas})
    method_cfg = load_config(None, [], method).method_args
    return METHODS[method](copy.deepcopy(model), tokenizer, cfg.train, method_cfg, provided)


def train(cfg, module, data: list[dict], warmup: int) -> float:
    """Seconds of the timed steps of one epoch over `data` in the project's Trainer."""
    L.seed_everything(0, verbose=False)
    clock = StepClock(warmup)
    trainer = make_trainer(
        cfg, None, module.per_group_weights, limit_val_batches=0, enable_progress_bar=False, callbacks=[clock]
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    return clock.seconds


@torch.no_grad()
def generate(module, batch: dict, new_tokens: int, device: torch.device, repeats: int = 2) -> float:
    """Best seconds of `repeats` greedy generations of `batch` (the first warms up)."""
    module.to(device).eval()
    batch = {k: v.to(device) for k, v in batch.items()}
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with autocast("bf16-mixed", device):
            module.generate(batch, new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    quiet_libraries()
    args = arguments(__doc__, results=RESULTS.with_name("results_gpu.json"))
    batch, width, steps, prompt_width, new_tokens = SMOKE if args.smoke else FULL
    cfg = load_config(None, [*args.overrides, "train.precision=bf16-mixed", "train.max_epochs=1"], "unified_lora")
    device = inference_device(cfg.train)
    started = time.perf_counter()
    tokenizer, model, name = base_model(args.overrides, args.smoke, device)
    vocab = model.config.vocab_size
    data = batches(vocab, batch, width, WARMUP + steps, PERSONAS)
    tokens = batch * width * steps
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    datasheet = next((tflops for key, tflops in DATASHEET_BF16_TFLOPS if key in hardware), None)
    config = model.config
    measured = peak_gflops(torch.bfloat16, config.hidden_size, config.intermediate_size, batch * width, device=device)
    peak_tflops = datasheet or measured / 1e3
    results = {
        "device": hardware,
        "model": name,
        "peak_tflops_bf16": peak_tflops,
        "peak_is_datasheet": int(bool(datasheet)),
    }
    results["matmul_tflops_bf16_measured"] = measured / 1e3

    seconds, memory = {}, {}
    for method in ("unified_lora", "per_persona_lora"):
        reset_memory(device)
        module = module_for(method, cfg, tokenizer, model)
        seconds[method] = train(cfg, module, data, WARMUP)
        memory[method] = memory_gb(device)
        per_token = flops_per_token(module, width)
        results[f"{method}_train_tokens_per_s"] = tokens / seconds[method]
        results[f"{method}_mfu"] = per_token * tokens / seconds[method] / (peak_tflops * 1e12)
        results[f"{method}_train_peak_memory_gb"] = memory[method]
        del module
    results["per_persona_train_vs_unified"] = seconds["per_persona_lora"] / seconds["unified_lora"]

    ids = torch.randint(1, vocab - 1, (PERSONAS, prompt_width), generator=torch.Generator().manual_seed(1))
    # one request per persona: 200 adapters in one batch
    prompts = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "group_idx": torch.arange(PERSONAS)}
    for method in ("unified_lora", "per_persona_lora"):
        reset_memory(device)
        module = module_for(method, cfg, tokenizer, model)
        seconds[method] = generate(module, prompts, new_tokens, device)
        results[f"{method}_generate_turns_per_s"] = PERSONAS / seconds[method]
        results[f"{method}_generate_peak_memory_gb"] = memory_gb(device)
        del module
    results["per_persona_generate_vs_unified"] = seconds["per_persona_lora"] / seconds["unified_lora"]
    results["gpu_check_s"] = time.perf_counter() - started

    print(f"{name} on {hardware}, bf16-mixed, batch {batch} x {width} tokens:")
    peak_kind = "datasheet" if datasheet else "measured matmul"
    print(f"  peak {peak_tflops:.1f} TFLOP/s ({peak_kind}); matmul at the model's widths {measured / 1e3:.1f}")
    for method in ("unified_lora", "per_persona_lora"):
        print(
            f"  {method:17s} train {results[f'{method}_train_tokens_per_s']:9.0f} tokens/s, MFU "
            f"{results[f'{method}_mfu']:.1%}, peak {results[f'{method}_train_peak_memory_gb']:.1f} GB; generate "
            f"{results[f'{method}_generate_turns_per_s']:7.1f} turns/s ({new_tokens} new tokens)"
        )
    print(
        f"  {PERSONAS} adapters vs one: train {results['per_persona_train_vs_unified']:.2f}x (the study: ~100x, "
        f"a job per persona), generate {results['per_persona_generate_vs_unified']:.2f}x"
    )
    print(f"  the whole check: {results['gpu_check_s']:.0f} s")
    record(results, args.results)


if __name__ == "__main__":
    main()
