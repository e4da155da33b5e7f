"""Where a config's models run (`train.accelerator`, `train.devices`, `train.strategy`).

A fit runs on the devices the config names, never on every device Lightning can find:
on a machine with 8 GPUs, `train.devices=1` (the default) fits on one, and sweep workers
(research/recipes/sweep.py) each see their own. Evaluation, the probe and serving run in
the run's own process on one device, the first of the fit's.

Several devices fit with DistributedDataParallel, one process per device, which the fit
spawns (Lightning's spawn launcher) and which end with it: the process that called the fit
keeps the one MLflow run, gets rank 0's trained weights back, evaluates once and saves one
adapter. Lightning's other launcher re-runs the whole command line in every rank, which
would open a run, evaluate and save in each of them.
"""

from __future__ import annotations

import torch

from research.config import TrainConfig


def accelerator(train: TrainConfig) -> str:
    """ "cuda" or "cpu": `train.accelerator`, auto being cuda when a GPU is visible."""
    if train.accelerator != "auto":
        return train.accelerator
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_indices(devices: str) -> list[int] | None:
    """The indices `train.devices` names ("0,3" -> [0, 3], "2," -> [2]); None for a count or auto."""
    return [int(i) for i in devices.split(",") if i] if "," in devices else None


def inference_device(train: TrainConfig) -> torch.device:
    """The device evaluation, the probe and serving run on: the first of the fit's devices."""
    if accelerator(train) == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", (device_indices(train.devices) or [0])[0])


def device_count(train: TrainConfig) -> int:
    """How many devices the fit runs on (auto: every GPU, or the one CPU)."""
    if indices := device_indices(train.devices):
        return len(indices)
    if train.devices == "auto":
        return torch.cuda.device_count() if accelerator(train) == "cuda" else 1
    return int(train.devices)


def trainer_devices(train: TrainConfig, per_group_weights: bool = False) -> dict:
    """Lightning Trainer settings: accelerator, devices and strategy. `per_group_weights`: the
    module trains weights per group (research/modules/base.py), which a step may leave out."""
    strategy = train.strategy
    if strategy == "ddp" or device_count(train) > 1:
        from lightning.pytorch.strategies import DDPStrategy

        # spawned, so the calling process keeps the run (module docstring). Unused weights are
        # looked for, so a group no device saw in a step keeps no gradient and AdamW leaves it
        # as it was, as in one process; the search costs a pass over the graph, and a module
        # that uses every weight in every step is spared it
        strategy = DDPStrategy(start_method="spawn", find_unused_parameters=per_group_weights)
    return {"accelerator": accelerator(train), "devices": train.devices, "strategy": strategy}
