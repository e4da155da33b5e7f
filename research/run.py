"""The main job (`make run`): data if missing, base model if missing, then
no_adaptation and unified_lora trained, evaluated on test, logged to MLflow and
compared in one table with the simulator's oracle headroom."""

from __future__ import annotations

import json
from pathlib import Path

from research.config import load_config

MAIN_METHODS = ("no_adaptation", "unified_lora")


def main_job(overrides: list[str] = ()) -> list:
    from research.report import print_results

    configs = [load_config(None, overrides, method) for method in MAIN_METHODS]
    data_dir, base_dir = Path(configs[0].data.dir), Path(configs[0].base_model)
    if not (data_dir / "meta.json").exists():
        from research.data.generate import SimulatorConfig, generate

        print(f"[1/3] generating the persona dataset into {data_dir.parent}")
        generate(SimulatorConfig(), data_dir.parent)
    if not (base_dir / "config.json").exists():
        from research.base_model import BaseConfig, pretrain_from_dataset

        print(f"[2/3] pretraining the base model into {base_dir}")
        pretrain_from_dataset(data_dir.parent / "neutral", base_dir, BaseConfig())
    from research.train import train_and_evaluate

    results = []
    for cfg in configs:
        print(f"[3/3] {cfg.method}: train and evaluate")
        results.append(train_and_evaluate(cfg))
    meta = json.loads((data_dir / "meta.json").read_text())
    print_results(results, "test", meta.get("oracle_headroom"))
    return results
