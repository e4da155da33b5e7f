"""Devices as configuration: what a config asks for is what fits, evaluates and serves; a
data-parallel fit on two CPU processes (gloo) logs one MLflow run, one adapter and one
evaluation, and trains what one process trains; sweep workers never share a GPU."""

import math
from pathlib import Path

import mlflow
import polars as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from safetensors.torch import load_file

from research.config import ConfigError
from research.models.devices import inference_device, trainer_devices
from research.recipes.experiment import load_config
from research.recipes.sweep import worker_gpus
from research.recipes.train import train_and_evaluate

DDP = ["train.accelerator=cpu", "train.devices=2", "train.strategy=ddp"]


def test_a_fit_takes_one_device_unless_told_and_several_fit_with_spawned_ddp():
    default = load_config(None, [], "unified_lora").train
    assert trainer_devices(default) == {"accelerator": "cpu", "devices": "1", "strategy": "auto"}
    several = trainer_devices(load_config(None, ["train.devices=2"], "unified_lora").train, per_group_weights=True)
    strategy = several["strategy"]
    assert isinstance(strategy, DDPStrategy) and strategy._start_method == "spawn" and several["devices"] == "2"
    assert strategy._ddp_kwargs["find_unused_parameters"]  # a group absent from a step keeps no gradient
    gpus = load_config(None, ["train.accelerator=cuda", "train.devices=2,3"], "unified_lora").train
    assert inference_device(gpus) == torch.device("cuda", 2) and inference_device(default) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.devices: 'two' is not allowed"):
        load_config(None, ["train.devices=two"], "unified_lora")


def test_sweep_workers_take_a_gpu_each_and_never_share_one():
    assert worker_gpus(8, [str(i) for i in range(8)]) == [str(i) for i in range(8)]
    assert worker_gpus(3, ["1", "3", "4", "6"]) == ["1", "3", "4"]  # the user's list; 6 left over
    assert worker_gpus(2, []) == [None, None]  # no GPU: the workers share the CPU
    with pytest.raises(ConfigError, match="3 workers on 2 GPU"):
        worker_gpus(3, ["0", "1"])


def _lora_b(adapter: Path) -> float:
    weights = load_file(adapter / "adapter_model.safetensors")
    return sum(float(w.abs().sum()) for key, w in weights.items() if "lora_B" in key)


@pytest.mark.parametrize("method", ["unified_lora", "per_persona_lora"])
def test_a_ddp_fit_is_one_run_one_adapter_one_evaluation_close_to_one_process(method, source_runs, experiment):
    """The one-process fit is the session's (source_runs); the DDP fit has the same config on two
    processes, so the same steps of the same global batch, in another data order.
    Tolerances: val/loss within 0.05 (2%), test metrics within 0.15. At this size (a 1-layer
    base, 8 test turns) one-process fits that differ only in their seed already differ by up to
    0.10 in test embedding similarity and 0.015 in val/loss, and a DDP fit is such another draw."""
    reference, runs = source_runs
    store = [o for o in experiment if o.startswith(("tracking.", "data.cache_dir"))]
    shared = [o for o in reference if not o.startswith(("tracking.", "data.cache_dir"))]
    cfg = load_config(None, [*shared, *store, *DDP], method)
    ddp = train_and_evaluate(cfg)

    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    experiment_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    [run] = client.search_runs([experiment_id])  # one run: no rank opened one of its own
    assert run.info.run_id == ddp.run_id and run.info.status == "FINISHED"
    assert {k: run.data.params[f"train.{k}"] for k in ("accelerator", "devices", "strategy")} == {
        "accelerator": "cpu",
        "devices": "2",
        "strategy": "ddp",
    }
    one_store = mlflow.tracking.MlflowClient(load_config(None, reference, method).tracking.uri)
    one = one_store.get_run(runs[method])
    for key in ("val/loss", "time/fit_s", "test/param_f1"):  # each point logged once: no rank logged twice
        assert len(client.get_metric_history(ddp.run_id, key)) == len(one_store.get_metric_history(runs[method], key))

    def artifacts(store, run_id) -> tuple[int, list[Path]]:
        """(predictions logged, the adapter directories saved)"""
        root = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=store.tracking_uri))
        adapters = sorted(p.parent for p in (root / "adapter").rglob("adapter_model.safetensors"))
        return pl.read_parquet(root / "predictions.parquet").height, adapters

    predictions, adapters = artifacts(client, ddp.run_id)
    one_predictions, one_adapters = artifacts(one_store, runs[method])
    assert predictions == one_predictions  # evaluated once
    assert [a.name for a in adapters] == [a.name for a in one_adapters]  # one adapter (one per persona, grouped)
    # rank 0's trained weights came back to the process that evaluated and saved (B starts at zero)
    assert all(_lora_b(adapter) > 0 for adapter in adapters)

    assert abs(run.data.metrics["val/loss"] - one.data.metrics["val/loss"]) <= 0.05
    for key in [k for k in one.data.metrics if k.startswith("test/") and "/param_recall/" not in k]:
        assert math.isfinite(ddp.metrics[key]) and abs(ddp.metrics[key] - one.data.metrics[key]) <= 0.15, key
