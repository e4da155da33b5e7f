"""The group-adapter engine, the L2 constraint, clustering and the merges, on the tiny base."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from research.config import ClusteringConfig
from research.datamodules.persona import PersonaDataModule
from research.evaluation.clustering import cluster_personas
from research.models.base import load_base
from research.modules.group_lora import read_adapter
from research.modules.merges import MergeConfig, _normalised, merge_adapters, merge_plan
from research.recipes.experiment import load_config
from research.recipes.train import build_module


@pytest.fixture
def setup(experiment):
    cfg = load_config(None, experiment, "per_persona_lora")
    tokenizer, model = load_base(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size)
    datamodule.prepare_data()
    datamodule.setup()
    return cfg, model, datamodule


def _randomise(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def _rows_of(datamodule, personas, n=2):
    rows = [ex for p in personas for ex in [e for e in datamodule.examples["train"] if e["persona_id"] == p][:n]]
    return datamodule._collate(rows)


def test_mixed_batch_rows_match_each_persona_adapter_reloaded_in_plain_peft(setup, tmp_path):
    cfg, model, dm = setup
    module = build_module(cfg, model, dm.tokenizer, dm)[0].eval()
    _randomise(module)
    personas = dm.persona_ids[:3]
    batch = _rows_of(dm, personas, n=1)
    with torch.no_grad():
        module.router.route(batch["group_idx"])
        mixed = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    module.save_adapter(tmp_path)
    for row, persona in enumerate(personas):
        reloaded = PeftModel.from_pretrained(load_base(cfg.base_model)[1], tmp_path / persona).eval()
        with torch.no_grad():
            single = reloaded(
                input_ids=batch["input_ids"][row : row + 1], attention_mask=batch["attention_mask"][row : row + 1]
            ).logits
        torch.testing.assert_close(mixed[row : row + 1], single, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the adapters differ, so routing matters
        module.router.route(torch.zeros_like(batch["group_idx"]))
        same = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(same[1:], mixed[1:], atol=1e-3)


def test_a_step_on_persona_a_leaves_persona_b_untouched_despite_adamw_state(setup):
    cfg, model, dm = setup
    module = build_module(cfg, model, dm.tokenizer, dm)[0].train()
    a, b = dm.persona_ids[:2]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)

    def step(persona):
        optimizer.zero_grad()  # set_to_none, as Lightning does
        module.model_step(_rows_of(dm, [persona])).backward()
        optimizer.step()

    def group_state(persona):
        g = dm.group_of[persona]
        return [t.detach().clone() for layer in module.layers.values() for t in (layer.lora_A[g], layer.lora_B[g])]

    step(b)  # b now has AdamW momentum and would drift on it
    before_b, before_a = group_state(b), group_state(a)
    step(a)
    assert all(torch.equal(x, y) for x, y in zip(before_b, group_state(b), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(before_a, group_state(a), strict=True))


def test_a_group_without_training_dialogues_is_an_error(setup):
    cfg, model, dm = setup
    dm.examples["train"] = [e for e in dm.examples["train"] if e["persona_id"] != dm.persona_ids[0]]
    with pytest.raises(ValueError, match=f"group {dm.persona_ids[0]} has no training dialogues"):
        build_module(cfg, model, dm.tokenizer, dm)[0]


@pytest.mark.parametrize("algorithm", ["kmeans", "agglomerative", "dbscan"])
@pytest.mark.parametrize("features", ["behaviour", "description"])
def test_clustering_is_deterministic_for_a_seed(setup, algorithm, features):
    _, _, dm = setup
    cfg = ClusteringConfig(algorithm=algorithm, features=features, k=0, k_max=4, min_samples=2)
    first, second = cluster_personas(cfg, dm), cluster_personas(cfg, dm)
    assert np.array_equal(first.labels, second.labels) and len(first.labels) == len(dm.persona_ids)
    assert sorted(set(first.labels.tolist())) == list(range(first.k)) and sum(first.sizes()) == len(dm.persona_ids)


def test_behaviour_features_ignore_test_dialogues(setup):
    _, _, dm = setup
    cfg = ClusteringConfig(k=2)
    before = cluster_personas(cfg, dm).features
    dm.examples["test"] = [
        {**example, "turns": [(prompt, "Setting the AC to 30 degrees!!!") for prompt, _ in example["turns"]]}
        for example in dm.examples["test"]
    ]
    assert np.array_equal(before, cluster_personas(cfg, dm).features)


def test_moe_plan_takes_the_k_nearest_in_the_cluster_with_cosine_weights():
    from research.evaluation.clustering import Clustering

    features = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    clustering = Clustering(["p0", "p1", "p2", "p3", "p4"], np.array([0, 0, 0, 0, 1]), features, 0.0)
    groups, plan = merge_plan(MergeConfig(neighbours=2), clustering)
    assert groups["p0"] == "p0" and [p for p, _ in plan["p0"]] == ["p0", "p1"]
    assert [w for _, w in plan["p0"]] == pytest.approx([1 / 1.8, 0.8 / 1.8])
    assert plan["p4"] == [("p4", 1.0)]  # alone in its cluster
    _, weighted = merge_plan(
        MergeConfig(scope="cluster", weighting="val_x_centrality"),
        clustering,
        dict.fromkeys(clustering.persona_ids, 0.5),
    )
    centroid = features[:4].mean(axis=0) / np.linalg.norm(features[:4].mean(axis=0))
    expected = _normalised([(p, 0.5 * float(features[i] @ centroid)) for i, p in enumerate(["p0", "p1", "p2", "p3"])])
    assert [p for p, _ in weighted["cluster_0"]] == [p for p, _ in expected]
    assert [w for _, w in weighted["cluster_0"]] == pytest.approx([w for _, w in expected])


def _toy_pair(base_dir, tmp_path):
    dirs = {}
    for i, persona in enumerate(["p0", "p1"]):
        model = get_peft_model(
            load_base(str(base_dir))[1], LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        )
        _randomise(model, seed=i)
        model.save_pretrained(tmp_path / persona)
        dirs[persona] = tmp_path / persona
    return dirs


def _ties(deltas, weights, density):
    """TIES by hand: keep the top `density` magnitudes of each delta, elect the sign of
    the summed pruned deltas, average the weighted deltas that agree with it."""
    pruned = []
    for d in deltas:
        keep = int(density * d.size)
        threshold = np.sort(np.abs(d).ravel())[::-1][keep - 1] if keep else np.inf
        pruned.append(np.where(np.abs(d) >= threshold, d, 0.0) if keep < d.size else d)
    pruned = np.stack(pruned)
    sign = np.where(pruned.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(pruned) == sign
    weighted = pruned * np.asarray(weights)[:, None, None]
    return (weighted * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)


def _truncate(delta, rank):
    u, s, vh = np.linalg.svd(delta)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


@pytest.mark.parametrize(
    "combination,density,hand",
    [
        ("cat", 0.5, lambda d, w: w[0] * d[0] + w[1] * d[1]),
        ("svd", 0.5, lambda d, w: _truncate(w[0] * d[0] + w[1] * d[1], 2)),
        ("ties_svd", 0.5, lambda d, w: _truncate(_ties(d, w, 0.5), 2)),
        ("dare_ties_svd", 1.0, lambda d, w: _truncate(_ties(d, w, 1.0), 2)),  # density 1: nothing dropped at random
    ],
)
def test_merge_reproduces_a_hand_computed_merge_of_a_toy_pair(base_dir, tmp_path, combination, density, hand):
    dirs = _toy_pair(base_dir, tmp_path)
    weights = [0.3, 0.7]
    merged = merge_adapters(
        load_base(str(base_dir))[1],
        dirs,
        {"m": [("p0", weights[0]), ("p1", weights[1])]},
        MergeConfig(combination=combination, density=density),
    )["m"]
    sources = [read_adapter(dirs[p])[1] for p in ("p0", "p1")]
    assert merged.keys() == sources[0].keys()
    for name, (a, b) in merged.items():
        deltas = [(src[name][1] @ src[name][0]).double().numpy() for src in sources]
        np.testing.assert_allclose((b @ a).double().numpy(), hand(deltas, weights), rtol=1e-4, atol=1e-5)
