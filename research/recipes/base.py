"""`research base`: pretrain the tiny base model, probe it and write its card.

The card (research.models.base.write_card) records what reproduces and judges the base:
its fingerprint, recipe, the data's fingerprint, the copy probe, pretraining time and the
machine. Pretrained with the default recipe on the default data, the base should be the
one shipped in the repository; the comparison printed at the end says whether it is.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from research.data.schema import fingerprint
from research.evaluation.probe import copy_probe
from research.models.base import (
    SHIPPED_BASE,
    BaseConfig,
    base_fingerprint,
    load_base,
    pretrain_from_dataset,
    read_card,
    write_card,
)


def machine() -> str:
    """The CPU's model name and its bf16 support, which decide how fast (and, in bf16, how
    exactly) it computes."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = [unit for unit in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if unit in flags]
    return f"{name or 'unknown CPU'} ({', '.join(units) or 'no AVX2'})"


def _rounded(results: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}


def pretrain_base(data_dir: str | Path, out_dir: str | Path, cfg: BaseConfig, probe_speakers: int = 150) -> dict:
    """Pretrain into `out_dir`, run the copy probe, write the card; returns the card's facts."""
    stats = pretrain_from_dataset(data_dir, out_dir, cfg)
    probe = copy_probe(*load_base(str(out_dir)), speakers=probe_speakers)
    facts = {
        "fingerprint": base_fingerprint(str(out_dir)),
        "recipe": asdict(cfg),
        "data": {"dir": str(data_dir), "fingerprint": fingerprint(data_dir)},
        "parameters": stats["parameters"],
        "pretraining": {
            "seconds": round(stats["seconds"]),
            "final_loss": round(stats["final_loss"], 4),
            "tokens_per_epoch": stats["tokens_per_epoch"],
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
        },
        "probe": {oracle: _rounded(results) for oracle, results in probe.items()},
    }
    write_card(out_dir, facts)
    return facts


def against_shipped(facts: dict, shipped: str | Path = SHIPPED_BASE) -> str:
    """Whether a freshly pretrained base is the shipped one, and if not, why it may differ."""
    card = read_card(shipped)
    if card is None:
        return f"no shipped base card in {shipped}/ to compare with"
    if facts["fingerprint"] == card["fingerprint"]:
        return f"identical to the shipped base {shipped}/ (fingerprint {card['fingerprint']})"
    differs = [name for name in ("recipe", "data") if facts[name] != card[name]]
    if differs:
        return f"not the shipped base: its {' and '.join(differs)} differ from {shipped}/README.md"
    shipped_f1, own_f1 = card["probe"]["resolved"]["param_f1"], facts["probe"]["resolved"]["param_f1"]
    return (
        f"same recipe and data as the shipped base, other weights (fingerprint {facts['fingerprint']} against "
        f"{card['fingerprint']}): this CPU ({facts['pretraining']['machine']}, {facts['pretraining']['threads']} "
        f"threads) rounds float32 sums in another order than {card['pretraining']['machine']} "
        f"({card['pretraining']['threads']} threads), and over thousands of steps that gives a slightly different "
        f"base. Probe told resolved: {own_f1:.2f} here, {shipped_f1:.2f} shipped. Runs on the two are not "
        "comparable (their base_fingerprint tags differ); use the shipped base to compare with published figures."
    )
