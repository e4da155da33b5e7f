"""dual_tower on the tiny base: the specific tower's size, the questioner-contrastive loss and
its memory, what the clusters and prototypes are made of, frozen heads, and the run served."""

import mlflow
import pytest
import torch
from conftest import evaluated_requests, overrides

from research.datamodules.persona import PersonaDataModule
from research.models.base import base_fingerprint, load_base
from research.modules.dual_tower import PrototypeMemory, build_towers, questioner_contrastive
from research.recipes.experiment import load_config
from research.recipes.serve import RoutedModel, known_users
from research.recipes.train import build_module, train_and_evaluate
from research.tracking.registry import promote, register

SMALL = ["method_args.clusters=3", "method_args.memory=8", "method_args.projection_dim=16", "method_args.rank=4"]


@pytest.mark.parametrize("rank", [2, 5])
def test_the_specific_towers_parameters_are_what_its_rank_gives(base_dir, rank):
    _, model = load_base(str(base_dir))
    config = model.config
    tower, norm = build_towers(model, rank)
    mlp = sum(p.numel() for p in tower.mlps.parameters())
    assert mlp == config.num_hidden_layers * 3 * config.hidden_size * rank  # gate, up: h -> r; down: r -> h
    assert sum(p.numel() for p in tower.norm.parameters()) == config.hidden_size  # its own final norm
    assert norm.specific is tower.norm and norm.specific is not norm.general
    # the general tower is the base model's MLP, untouched
    assert all(layer.mlp.general.__class__.__name__ != "LowRankSwiGLU" for layer in model.model.layers)


def test_the_contrastive_loss_is_lower_next_to_its_own_personas_prototype():
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(2, 3, 16, generator=generator)  # [views, (cluster, persona) pairs, dim]
    views = prototypes[:, [0]] + 0.1 * torch.randn(2, 1, 16, generator=generator)  # next to pair 0's prototype
    candidates = [torch.tensor([0, 1, 2])]
    own = questioner_contrastive(views, prototypes, candidates, [0], temperature=0.1)
    other = questioner_contrastive(views, prototypes, candidates, [1], temperature=0.1)
    assert 0 <= own < other <= 10  # clipped to [0, 10]
    assert questioner_contrastive(views, prototypes, candidates, [1], temperature=1e-4) == 10


def test_the_memory_is_a_fifo_per_pair_and_its_prototypes_are_the_means():
    memory = PrototypeMemory([2, 3], dim=4)
    assert torch.all(memory.prototypes() == 1e-6)  # nothing pushed yet: the public code's stand-in
    for value in (1.0, 2.0, 3.0):  # pair 0 holds 2: the first is overwritten
        memory.push([0], torch.full((2, 1, 4), value))
    memory.push([1], torch.full((2, 1, 4), 5.0))
    prototypes = memory.prototypes()
    assert torch.allclose(prototypes[:, 0], torch.full((2, 4), 2.5))
    assert torch.allclose(prototypes[:, 1], torch.full((2, 4), 5.0))


def test_clusters_and_prototypes_come_from_training_data_only_and_frozen_heads_stay_put(experiment):
    ablation = ["method_args.held_out=0.34", "method_args.freeze_heads=true"]
    cfg = load_config(None, [*experiment, *SMALL, *ablation], "dual_tower")
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, model, tokenizer, datamodule)[0]
    assert len(datamodule.held_out) == 2
    trained = [e for e in datamodule.examples["train"] if e["persona_id"] not in datamodule.held_out]
    assert set(module.cluster_of) == {e["dialogue_id"] for e in trained}  # no val, test or held-out dialogue

    module.eval()  # evaluation reads the towers, never the memory
    with torch.no_grad():
        module.validation_step(datamodule._collate(datamodule.examples["val"][:4]), 0)
    assert not module.prototype_memory.written.any()

    module.train()
    for step in range(2):  # the second step scores against prototypes the first one pushed
        module.zero_grad()
        loss = module.training_step(datamodule._collate(trained[4 * step : 4 * step + 4]), step)
        loss.backward()
    assert int(module.prototype_memory.written.sum()) == 8
    pushed = module.prototype_memory.owner[module.prototype_memory.written].tolist()
    persona_of = {j: datamodule.persona_ids[p] for (_, p), j in module.pair_of.items()}
    assert {persona_of[j] for j in pushed} <= {e["persona_id"] for e in trained}
    assert not module.head_weight.requires_grad and module.head_weight.grad is None  # the ablation: frozen heads
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.specific_tower.mlps.parameters())
    assert module.pool_norm.weight.grad is not None  # the contrastive term reaches the specific tower's states


@pytest.fixture(scope="module")
def dual_tower_run(data_root, base_dir, tmp_path_factory):
    experiment = overrides(data_root, base_dir, tmp_path_factory.mktemp("dual_tower"))
    cfg = load_config(None, [*experiment, *SMALL, "train.lr=3e-3"], "dual_tower")
    return cfg, train_and_evaluate(cfg)


def test_dual_tower_logs_both_losses_and_serves_as_evaluated(dual_tower_run, data_root, tmp_path):
    cfg, result = dual_tower_run
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert {
        "train/lm_loss",
        "train/contrastive_loss",
        "question_clusters/k",
        "test/param_f1",
    } <= run.data.metrics.keys()
    assert 0 <= run.data.metrics["train/contrastive_loss"] <= 10
    routing = tmp_path / "routing"
    version = register(cfg.tracking.uri, result.run_id).version
    table = promote(cfg.tracking.uri, routing, "dual_tower", version, "all", base_fingerprint(cfg.base_model))
    assert table["fallback"] is not None  # one model for everyone: who asks is in the prompt
    users = known_users(data_root / "personas")
    model = RoutedModel(cfg.base_model, cfg.tracking.uri, routing, cfg.eval.max_new_tokens, users)
    requests, expected = evaluated_requests(cfg, result.run_id, sorted(users)[:3])
    assert all(expected) and model.answer(requests) == expected
