"""reptile on the tiny base: the outer update (no inner steps leave theta as it is, one step
moves it toward the adapted weights), then meta-training, adaptation, the export and serving."""

from pathlib import Path

import mlflow
import pytest
import torch
from conftest import evaluated_requests, overrides

from research.datamodules.persona import PersonaDataModule
from research.models.base import base_fingerprint, load_base
from research.modules.reptile import META_INIT
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, known_users
from research.recipes.train import build_module, train_and_evaluate
from research.tracking.registry import promote, register


def _theta(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in (*module.meta_A, *module.meta_B)]


def _adapted_mean(module, groups: list[int]) -> list[torch.Tensor]:
    """The mean over `groups` of each layer's A factors, then of its B factors (theta's order)."""
    layers = list(module.layers.values())
    means_a = [torch.stack([layer.lora_A[g] for g in groups]).mean(0).detach() for layer in layers]
    means_b = [torch.stack([layer.lora_B[g] for g in groups]).mean(0).detach() for layer in layers]
    return means_a + means_b


def test_no_inner_steps_leave_theta_unchanged_and_one_outer_step_moves_it_toward_the_adapted_weights(experiment):
    cfg = load_config(None, [*experiment, "method_args.inner_steps=0", "method_args.inner_lr=1e-2"], "reptile")
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, model, tokenizer, datamodule)[0]
    personas = list(datamodule.persona_ids)[:3]
    support = [e for p in personas for e in [x for x in datamodule.examples["train"] if x["persona_id"] == p][:2]]
    batch = datamodule._collate(support)
    groups = batch["group_idx"].unique().tolist()
    assert len(groups) == 3

    before = _theta(module)
    assert torch.isnan(torch.tensor(module.reptile_step(batch, epsilon=1.0)))  # no inner step: no support loss
    for now, then in zip(_theta(module), before, strict=True):
        assert torch.equal(now, then)

    module.args.inner_steps = 1
    loss = module.reptile_step(batch, epsilon=0.5)
    assert loss > 0
    adapted = _adapted_mean(module, groups)  # the drawn personas' groups after their inner step
    after = _theta(module)
    moved = sum((a - b).abs().sum() for a, b in zip(after, before, strict=True))
    assert moved > 0
    for now, then, target in zip(after, before, adapted, strict=True):
        torch.testing.assert_close(now, then + 0.5 * (target - then))  # halfway to the adapted mean
    distance_before = sum(((t - b) ** 2).sum() for t, b in zip(adapted, before, strict=True))
    distance_after = sum(((t - a) ** 2).sum() for t, a in zip(adapted, after, strict=True))
    assert distance_after < distance_before
    untouched = [g for g in range(len(module.group_names)) if g not in groups]
    assert all(layer.lora_B[g].abs().sum() == 0 for layer in module.layers.values() for g in untouched)


@pytest.fixture(scope="module")
def reptile_run(data_root, base_dir, tmp_path_factory):
    experiment = overrides(data_root, base_dir, tmp_path_factory.mktemp("reptile"))
    meta = ["method_args.outer_steps=3", "method_args.meta_batch=3", "method_args.support_size=2"]
    cfg = load_config(None, [*experiment, *meta, "method_args.inner_steps=1", "train.lr=3e-3"], "reptile")
    return cfg, train_and_evaluate(cfg)


def test_reptile_meta_trains_adapts_every_persona_and_serves_as_evaluated(reptile_run, data_root, tmp_path):
    cfg, result = reptile_run
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "test/embedding_similarity" in run.data.metrics
    assert len(client.get_metric_history(result.run_id, "meta/support_loss")) == 3  # one per outer step
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter"))
    users = known_users(data_root / "personas")
    assert (adapter / META_INIT / "adapter_config.json").exists()
    assert all((adapter / persona / "adapter_config.json").exists() for persona in users)

    routing = tmp_path / "routing"
    version = register(cfg.tracking.uri, result.run_id).version
    table = promote(cfg.tracking.uri, routing, "reptile", version, "all", base_fingerprint(cfg.base_model))
    assert set(table["routes"]) == set(users) and table["fallback"]["adapter"] == META_INIT
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, cfg.eval.max_new_tokens, users)
    requests, expected = evaluated_requests(cfg, result.run_id, sorted(users)[:3])
    assert all(expected) and model.answer(requests) == expected
    newcomer = {**requests[0], "persona_id": "newcomer", "name": "Ada"}  # the meta-learned initialisation
    assert model.answer([newcomer])[0]
