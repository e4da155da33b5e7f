"""moe_router on the tiny base: the router's weights, the experts combined in one pass,
gradients, experts started from a cluster_lora run, and serving."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import evaluated_requests

from research.datamodules.persona import PersonaDataModule
from research.models.base import base_fingerprint, load_base
from research.modules.group_lora import read_adapter
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, known_users
from research.recipes.train import build_module, train_and_evaluate
from research.tracking.registry import promote, register


def _build(experiment, *overrides):
    cfg = load_config(None, [*experiment, *overrides], "moe_router")
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    return build_module(cfg, model, tokenizer, datamodule)[0], datamodule


def _randomise(module, seed=0):
    """Experts that differ and routers that prefer some: the weights and gradients then mean something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name or "router" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("top_k", [0, 2])
def test_router_weights_sum_to_one_and_gradients_reach_the_experts_and_the_router(experiment, top_k):
    module, datamodule = _build(experiment, "method_args.experts=3", f"method_args.top_k={top_k}")
    _randomise(module)
    module.train()
    batch = next(iter(datamodule.train_dataloader()))
    module.routing.recording = True
    module.model_step(batch).backward()
    real = batch["attention_mask"].bool()
    for layer in module.layers.values():
        weights = layer.recorded[real]
        assert torch.allclose(weights.sum(-1), torch.ones(len(weights)), atol=1e-5)
        assert ((weights > 0).sum(-1) == (top_k or 3)).all()
    for k in range(3):  # every expert is chosen somewhere, so every one learns
        assert any(layer.lora_B[k].grad.abs().sum() > 0 for layer in module.layers.values()), f"expert {k}"
        assert any(layer.lora_A[k].grad.abs().sum() > 0 for layer in module.layers.values()), f"expert {k}"
    assert all(layer.query_router.weight.grad.abs().sum() > 0 for layer in module.layers.values())
    assert module.persona_router.linear.weight.grad.abs().sum() > 0


def test_the_experts_combine_in_one_pass_as_the_weighted_sum_of_their_deltas(experiment):
    module, _ = _build(experiment, "method_args.experts=3", "method_args.top_k=2")
    _randomise(module, seed=1)
    module.eval()
    layer = next(iter(module.layers.values()))
    x = torch.randn(2, 5, layer.base.in_features)
    module.routing.persona_logits = torch.randn(2, 3)
    with torch.no_grad():
        weights = layer.weights(x)
        expected = layer.base(x) + layer.scaling * sum(
            weights[..., k, None] * (x @ layer.lora_A[k].T @ layer.lora_B[k].T) for k in range(3)
        )
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_experts_start_from_a_cluster_lora_runs_adapters(source_runs):
    experiment, _ = source_runs
    clusters = train_and_evaluate(load_config(None, [*experiment, "method_args.clustering.k=2"], "cluster_lora"))
    module, _ = _build(experiment, "method_args.from_clusters=true", f"method_args.cluster_run={clusters.run_id}")
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=clusters.run_id, artifact_path="adapter"))
    names = sorted(set(json.loads((adapter / "groups.json").read_text()).values()))
    assert len(names) == 2
    for k, name in enumerate(names):
        for module_name, (a, b) in read_adapter(adapter / name)[1].items():
            layer = module.layers[module_name]
            torch.testing.assert_close(layer.scaling * layer.lora_B[k] @ layer.lora_A[k], b @ a)


@pytest.fixture(scope="module")
def moe_run(data_root, base_dir, tmp_path_factory):
    from conftest import overrides

    experiment = overrides(data_root, base_dir, tmp_path_factory.mktemp("moe"))
    cfg = load_config(None, [*experiment, "method_args.experts=2", "train.lr=3e-3"], "moe_router")
    return cfg, train_and_evaluate(cfg)


def test_moe_router_logs_its_routing_and_serves_as_evaluated(moe_run, data_root, tmp_path):
    cfg, result = moe_run
    run = mlflow.get_run(result.run_id)
    assert {"router/entropy", "router/load_0", "router/load_1"} <= run.data.metrics.keys()
    assert run.data.metrics["router/load_0"] + run.data.metrics["router/load_1"] == pytest.approx(1.0, abs=1e-4)
    routing = tmp_path / "routing"
    version = register(cfg.tracking.uri, result.run_id).version
    table = promote(cfg.tracking.uri, routing, "moe_router", version, "all", base_fingerprint(cfg.base_model))
    assert table["fallback"] is not None  # one mixture for everyone, routed per persona inside it
    users = known_users(data_root / "personas")
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, cfg.eval.max_new_tokens, users)
    requests, expected = evaluated_requests(cfg, result.run_id, sorted(users)[:3])
    assert all(expected) and model.answer(requests) == expected
    newcomer = {**requests[0], "persona_id": "newcomer", "name": "Ada"}  # routed on the mean persona
    assert model.answer([newcomer])[0]
