"""The main job (`make run`): data if missing, base model if missing, then
no_adaptation and unified_lora trained, evaluated on test, logged to MLflow and
compared in one table with the simulator's oracle headroom."""

from __future__ import annotations

import json
from pathlib import Path

from research.config import load_config

MAIN_METHODS = ("no_adaptation", "unified_lora")


def ensure_data_and_base(cfg) -> None:
    """Generate the dataset and pretrain the base model when they are missing."""
    data_dir, base_dir = Path(cfg.data.dir), Path(cfg.base_model)
    if not (data_dir / "meta.json").exists():
        from research.data.generate import SimulatorConfig, generate

        print(f"generating the persona dataset into {data_dir.parent}")
        generate(SimulatorConfig(), data_dir.parent)
    if not (base_dir / "config.json").exists():
        from research.base_model import BaseConfig, pretrain_from_dataset

        print(f"pretraining the base model into {base_dir}")
        pretrain_from_dataset(data_dir.parent / "neutral", base_dir, BaseConfig())


def main_job(overrides: list[str] = ()) -> list:
    from research.report import print_results
    from research.train import train_and_evaluate

    configs = [load_config(None, overrides, method) for method in MAIN_METHODS]
    ensure_data_and_base(configs[0])
    results = []
    for cfg in configs:
        print(f"{cfg.method}: train and evaluate")
        results.append(train_and_evaluate(cfg))
    meta = json.loads((Path(configs[0].data.dir) / "meta.json").read_text())
    print_results(results, "test", meta.get("oracle_headroom"))
    return results
