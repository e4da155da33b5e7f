"""Adapter merges: no training; each persona's adapter is a weighted merge of the
per-persona adapters of a finished `per_persona_lora` run, built with PEFT's
`add_weighted_adapter`, then evaluated like any method (mixed-adapter batches).

- moe_merge       (the study's sparse MoE) each persona: its K most similar personas in
                  its cluster (itself included), weights = cosine similarity, normalised;
- weighted_merge  (the study's) each cluster: its personas, weights = validation score x
                  centrality (cosine to the cluster centroid), normalised;
- ties_merge, dare_merge, svd_merge: the moe neighbourhoods merged with TIES, DARE-TIES
  or a truncated SVD of the weighted sum, on the weight deltas.

`cat` (moe, weighted) is the exact weighted sum of the deltas, sum_i w_i B_i A_i, the
study's formula (its rank is the sum of the ranks); PEFT's `linear` averages A and B
separately, which is not that sum. Similarity uses the clustering features; validation
scores come from the source run's val split, never test.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

from research.config import SEED, ClusteringConfig
from research.modules.base import Needs
from research.modules.group_lora import GroupLoraModule, engine_shape, load_group

Combination = Literal["cat", "svd", "ties_svd", "dare_ties_svd", "dare_linear_svd", "linear", "ties", "dare_ties"]


@dataclass
class MergeConfig:
    # a per_persona_lora run id; empty: the latest finished one on the same dataset and base model
    source_run: str = field(default="", metadata={"source_method": "per_persona_lora"})
    clustering: ClusteringConfig = field(default_factory=lambda: ClusteringConfig(k=5))
    scope: Literal["neighbours", "cluster"] = "neighbours"  # one merge per persona, or per cluster
    weighting: Literal["similarity", "val_x_centrality"] = "similarity"
    neighbours: int = field(default=5, metadata={"min": 1})  # K, for scope=neighbours
    combination: Combination = "cat"
    density: float = field(default=0.5, metadata={"gt": 0, "max": 1})  # ties / dare: the share of each delta kept
    val_metric: str = field(default="embedding_similarity", metadata={"metric": "per_persona"})  # val_x_centrality
    seed: int = field(default=0, metadata=SEED)  # dare prunes at random


@dataclass
class MoeMergeConfig(MergeConfig):
    pass


@dataclass
class WeightedMergeConfig(MergeConfig):
    scope: Literal["neighbours", "cluster"] = "cluster"
    weighting: Literal["similarity", "val_x_centrality"] = "val_x_centrality"


@dataclass
class TiesMergeConfig(MergeConfig):
    combination: Combination = "ties_svd"


@dataclass
class DareMergeConfig(MergeConfig):
    combination: Combination = "dare_ties_svd"


@dataclass
class SvdMergeConfig(MergeConfig):
    combination: Combination = "svd"


def merge_plan(
    args: MergeConfig, clustering, val_scores: dict[str, float] | None = None
) -> tuple[dict[str, str], dict[str, list[tuple[str, float]]]]:
    """(persona -> merged adapter name, merged adapter name -> [(source persona, weight)])."""
    ids, features, labels = clustering.persona_ids, clustering.features, clustering.labels
    groups, plan = {}, {}
    if args.scope == "neighbours":
        for i, persona in enumerate(ids):
            members = np.flatnonzero(labels == labels[i])
            similarity = features[members] @ features[i]
            top = members[np.argsort(-similarity, kind="stable")[: args.neighbours]]
            plan[persona] = _normalised([(ids[j], float(features[j] @ features[i])) for j in top])
            groups[persona] = persona
        return groups, plan
    centroids = clustering.centroids()
    for c in range(clustering.k):
        members = np.flatnonzero(labels == c)
        if args.weighting == "val_x_centrality":
            weights = [(ids[j], val_scores[ids[j]] * float(features[j] @ centroids[c])) for j in members]
        else:
            weights = [(ids[j], float(features[j] @ centroids[c])) for j in members]
        plan[f"cluster_{c}"] = _normalised(weights)
        groups.update({ids[j]: f"cluster_{c}" for j in members})
    return groups, plan


def _normalised(weights: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Negative weights clipped to 0, then summing to 1 (uniform if all are 0)."""
    clipped = [(p, max(w, 0.0)) for p, w in weights]
    total = sum(w for _, w in clipped)
    return [(p, w / total if total > 0 else 1 / len(clipped)) for p, w in clipped]


def merge_adapters(model, adapters: dict[str, object], plan: dict, args: MergeConfig) -> dict[str, dict]:
    """{merged name: {module name: (scaling * A, B)}} from PEFT's add_weighted_adapter on a
    copy of `model` holding the source adapters ({persona: directory})."""
    needed = sorted({p for members in plan.values() for p, _ in members})
    peft_model = None
    for persona in tqdm(needed, desc="load adapters", unit="adapter"):
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(copy.deepcopy(model), adapters[persona], adapter_name=persona)
        else:
            peft_model.load_adapter(adapters[persona], adapter_name=persona)
    density = {"density": args.density} if "ties" in args.combination or "dare" in args.combination else {}
    merged = {}
    for name, members in tqdm(plan.items(), desc=f"merge ({args.combination})", unit="adapter"):
        torch.manual_seed(args.seed)
        peft_model.add_weighted_adapter(
            [p for p, _ in members], [w for _, w in members], "merged", combination_type=args.combination, **density
        )
        merged[name] = {
            module_name: (
                module.scaling["merged"] * module.lora_A["merged"].weight.detach().clone(),
                module.lora_B["merged"].weight.detach().clone(),
            )
            for module_name, module in peft_model.base_model.model.named_modules()
            if isinstance(module, LoraLayer) and "merged" in module.lora_A
        }
        peft_model.delete_adapter("merged")
    return merged


class MergeModule(GroupLoraModule):
    config_class = MergeConfig
    trainable = False

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(clustering=args.clustering)

    def __init__(self, model, tokenizer, train, args: MergeConfig, provided) -> None:
        source = provided.source("source_run")
        persona_dirs = json.loads((source.artifacts / "adapter" / "groups.json").read_text())
        adapters = {persona: source.artifacts / "adapter" / directory for persona, directory in persona_dirs.items()}
        if missing := sorted(set(provided.persona_ids) - adapters.keys()):
            raise ValueError(f"source run {source.run_id} has no adapter for persona {missing[0]}")
        val_scores = None
        if args.weighting == "val_x_centrality":
            table = pl.read_parquet(source.artifacts / "per_persona.parquet")
            val = table.filter(pl.col("split") == "val")
            val_scores = dict(zip(val["persona_id"], val[args.val_metric], strict=True))
        groups, self.plan = merge_plan(args, provided.clustering, val_scores)
        merged = merge_adapters(model, adapters, self.plan, args)
        targets, rank = engine_shape(list(merged.values()))
        super().__init__(model, tokenizer, train, args, provided, groups, (targets, rank, rank, 0.0))
        for g, name in enumerate(self.group_names):
            load_group(self.layers, g, merged[name])

    def outputs(self):
        return {}, {"merge_plan.json": {name: dict(members) for name, members in self.plan.items()}}


class MoeMergeModule(MergeModule):
    config_class = MoeMergeConfig


class WeightedMergeModule(MergeModule):
    config_class = WeightedMergeConfig


class TiesMergeModule(MergeModule):
    config_class = TiesMergeConfig


class DareMergeModule(MergeModule):
    config_class = DareMergeConfig


class SvdMergeModule(MergeModule):
    config_class = SvdMergeConfig
