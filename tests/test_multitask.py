"""Multi-task: auxiliary heads on the unified LoRA, targets from training dialogues only."""

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from research.data.schema import assign_splits, load_dataset
from research.modules.multitask import DEVICE_NAMES, NUMERIC, before_each_reply, turn_targets
from research.recipes.experiment import load_config
from research.recipes.train import train_and_evaluate


def test_targets_are_the_devices_acted_on_and_each_setting_scaled_to_its_range():
    devices, values, present = turn_targets(
        [
            {"device": "lights", "parameter": "brightness", "value": "40"},
            {"device": "lights", "parameter": "color", "value": "warm"},
            {"device": "ac", "parameter": "temperature", "value": "23"},
        ]
    )
    assert [DEVICE_NAMES[i] for i, on in enumerate(devices) if on] == ["lights", "ac"]
    setting = dict(zip(NUMERIC, zip(values, present, strict=True), strict=True))
    assert setting[("lights", "brightness")] == (0.4, 1.0) and setting[("ac", "temperature")] == (0.5, 1.0)
    assert setting[("tv", "volume")] == (0.0, 0.0)


def test_each_reply_is_predicted_from_what_was_read_before_it():
    #            system  user  reply1  tmpl  user  reply2  pad
    labels = torch.tensor([[-100, -100, 7, 7, -100, -100, 9, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    hidden = torch.arange(8.0).view(1, 8, 1)
    rows, turns, pooled = before_each_reply(hidden, labels, mask)
    assert rows.tolist() == [0, 0] and turns.tolist() == [0, 1]
    assert pooled[:, 0].tolist() == [0.5, (0 + 1 + 4 + 5) / 4]
    changed = hidden.clone()
    changed[0, 2:4] = 100.0  # the first reply's tokens never feed a head
    assert torch.equal(before_each_reply(changed, labels, mask)[2], pooled)


def _lora(run_id: str) -> dict:
    return load_file(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter/adapter_model.safetensors")
    )


def test_heads_train_on_training_dialogues_and_zero_weights_are_unified(source_runs):
    experiment, runs = source_runs
    zero = ["method_args.persona_weight=0", "method_args.device_weight=0", "method_args.numeric_weight=0"]
    result = train_and_evaluate(load_config(None, [*experiment, *zero], "multitask"))
    unified, unweighted = _lora(runs["unified_lora"]), _lora(result.run_id)
    assert all(torch.equal(unified[k], unweighted[k]) for k in unified), "with weights 0 it is unified_lora"

    cfg = load_config(None, experiment, "multitask")
    weighted = train_and_evaluate(cfg)
    metrics = mlflow.get_run(weighted.run_id).data.metrics
    assert {"train/lm_loss", "train/persona_loss", "train/device_loss", "train/numeric_loss"} <= metrics.keys()
    assert metrics["train/persona_loss"] > 0
    trained = _lora(weighted.run_id)
    assert not all(torch.equal(unified[k], trained[k]) for k in unified), "the heads' gradients reach the LoRA"


def test_only_training_dialogues_give_targets(experiment):
    from research.datamodules.persona import PersonaDataModule
    from research.modules.base import Needs
    from research.recipes.train import base_copy, provide

    cfg = load_config(None, experiment, "multitask")
    tokenizer, _ = base_copy(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer)
    datamodule.prepare_data()
    datamodule.setup()
    provided = provide(Needs(actions=True), datamodule, {})
    _, dialogues = load_dataset(cfg.data.dir)
    splits = dict(
        assign_splits(dialogues, cfg.data.val_fraction, cfg.data.test_fraction)
        .select("dialogue_id", "split")
        .iter_rows()
    )
    assert provided.actions and {splits[d] for d in provided.actions} == {"train"}
    turns = {row["dialogue_id"]: row["turns"] for row in dialogues.iter_rows(named=True)}
    for dialogue, actions in provided.actions.items():  # one entry per assistant turn, its own actions
        assert actions == [t["actions"] for t in turns[dialogue] if t["role"] == "assistant"]
    assert len(provided.actions) == len(datamodule.examples["train"])


@pytest.mark.parametrize("weight", ["persona_weight", "device_weight", "numeric_weight"])
def test_weights_are_configurable(weight):
    assert getattr(load_config(None, [f"method_args.{weight}=0.3"], "multitask").method_args, weight) == 0.3
