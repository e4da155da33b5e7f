"""Mixture of LoRA experts with a learned router (the seeds' strategy 7).

K LoRA experts sit in every adapted layer (the group engine's layer, one group per
expert), trained jointly from PEFT's initialisation or started from a cluster_lora run's
cluster adapters (`from_clusters`, one expert per cluster). A small router mixes them
per input: at each adapted layer every token's weights over the experts are a softmax
(or the `top_k` best, renormalised) of

    query_router(x_t)  +  persona_router(persona features)

`route_on` keeps either term or both: `query` routes each token on the layer's input (the
request and the history it attends to, MixLoRA-style token routing; causal, so generation
with the KV cache routes as training did), `persona` routes each row on its persona's
features (description embedding and behaviour statistics of its history, so a persona
never trained on is routed too). Both routers start at zero: every expert starts with
weight 1/K.

The experts are combined in one batched pass, not K forward passes: the K experts' A
factors are stacked into one [K r, in] matrix and their B factors into one [out, K r],
so a layer computes x A^T once, scales each expert's r columns by its weight and
multiplies by B^T once (two matmuls whatever K).

Logged per epoch: `router/entropy` (mean over layers and tokens of the routing weights'
entropy, ln K when uniform) and `router/load_<k>` (the share of routing mass on expert k).

Exported as kind "module": `experts/<k>/` (each expert a standard PEFT LoRA directory),
`router.safetensors` (each layer's query router, the persona router and every persona's
features) and the manifest; serving rebuilds the mixture (`served`). A persona the export
does not know is routed on the mean persona's features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from research.modules.base import (
    AdaptationModule,
    Needs,
    Provided,
    ServedModel,
    greedy_generate,
    read_manifest,
    write_manifest,
)
from research.modules.group_lora import (
    GroupLoraLinear,
    engine_shape,
    export_group,
    inject,
    load_group,
    read_adapter,
)
from research.modules.unified_lora import UnifiedLoraConfig

EXPERTS_DIR = "experts"
ROUTER_FILE = "router.safetensors"


@dataclass
class MoeRouterConfig(UnifiedLoraConfig):
    # K when trained jointly; from_clusters takes one expert per cluster of the run
    experts: int = field(default=4, metadata={"min": 2})
    route_on: Literal["persona", "query", "both"] = "both"
    top_k: int = field(default=0, metadata={"min": 0})  # 0: soft weights over every expert; k: the k best, renormalised
    from_clusters: bool = False  # start the experts from a cluster_lora run's cluster adapters
    # a cluster_lora run id (with from_clusters); empty: the latest finished one of the lineage
    cluster_run: str = field(default="", metadata={"source_method": "cluster_lora", "used_when": "from_clusters"})
    # persona features' description embedder; empty: the bundled MiniLM
    embedder: str = field(default="", metadata={"embedder": True})


def mixture_weights(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Softmax of `logits` over the last dimension, or over its `top_k` largest (the rest 0)."""
    if not top_k or top_k >= logits.shape[-1]:
        return logits.softmax(-1)
    best, index = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, best.softmax(-1))


class MixtureRouting:
    """What every expert layer shares for the current batch: each row's persona logits
    (None: routing on the query alone), and whether layers keep their weights (training
    statistics)."""

    def __init__(self) -> None:
        self.persona_logits: torch.Tensor | None = None  # [rows, K]
        self.recording = False


class MixtureLoraLinear(GroupLoraLinear):
    """`base(x) + scaling * sum_k w_k B_k A_k x`, w from the layer's query router (if any)
    plus the row's persona logits; the experts are the group engine's groups."""

    def __init__(self, base, routing: MixtureRouting, experts, r, alpha, dropout, query: bool = True, top_k: int = 0):
        super().__init__(base, routing, experts, r, alpha, dropout)
        self.query_router = nn.Linear(base.in_features, experts) if query else None
        if self.query_router is not None:
            nn.init.zeros_(self.query_router.weight)
            nn.init.zeros_(self.query_router.bias)
        self.top_k, self.recorded = top_k, None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, tokens, K]: each token's weights over the experts."""
        experts = len(self.lora_A)
        logits = torch.zeros(*x.shape[:-1], experts, device=x.device)
        if self.query_router is not None:
            logits = logits + self.query_router(x.to(self.query_router.weight.dtype)).float()
        if self.router.persona_logits is not None:
            logits = logits + self.router.persona_logits[:, None, :].float()
        return mixture_weights(logits, self.top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = self.weights(x)
        if self.router.recording:
            self.recorded = weights.detach()
        a = torch.cat(list(self.lora_A))  # [K r, in]: every expert in one matmul
        b = torch.cat(list(self.lora_B), dim=1)  # [out, K r]
        h = self.dropout(x).to(a.dtype) @ a.T
        h = (h.unflatten(-1, (len(self.lora_A), self.r)) * weights.unsqueeze(-1).to(h.dtype)).flatten(-2)
        return out + (h @ b.T * self.scaling).to(out.dtype)


class PersonaRouter(nn.Module):
    """Persona features -> logits over the experts, one row per persona (zero at start)."""

    def __init__(self, features: torch.Tensor, experts: int) -> None:
        super().__init__()
        self.register_buffer("features", features.float())
        self.linear = nn.Linear(features.shape[1], experts)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), K]: the persona logits of each feature row index."""
        return self.linear(self.features[rows])


def mixture_layers(model, routing, experts: int, targets, r, alpha, dropout, route_on: str, top_k: int) -> dict:
    layer = partial(MixtureLoraLinear, query=route_on in ("query", "both"), top_k=top_k)
    return inject(model, targets, experts, r, alpha, dropout, router=routing, layer_class=layer)[1]


class MoeRouterModule(AdaptationModule):
    config_class = MoeRouterConfig
    adapter_kind = "module"

    @classmethod
    def needs(cls, args: MoeRouterConfig) -> Needs:
        persona = args.route_on in ("persona", "both")
        return Needs(persona_features=args.embedder if persona else None, held_out=args.held_out)

    def __init__(self, model, tokenizer, train, args: MoeRouterConfig, provided: Provided) -> None:
        experts = self._cluster_experts(provided) if args.from_clusters else []
        count = len(experts) or args.experts
        if count < 2:
            raise ValueError(f"moe_router: {count} expert(s); a mixture needs at least 2")
        if experts:  # the clusters' scalings are folded into their A factors: scaling 1
            targets, r = engine_shape(experts)
            alpha = r
        else:
            targets, r, alpha = args.target_modules, args.r, args.alpha
        model.requires_grad_(False)
        self.base_name = model.name_or_path
        self.routing = MixtureRouting()
        layers = mixture_layers(model, self.routing, count, targets, r, alpha, args.dropout, args.route_on, args.top_k)
        for k, factors in enumerate(experts):
            load_group(layers, k, factors)
        super().__init__(model, tokenizer, train, args, provided)
        self.layers = layers  # a plain dict: the layers are registered inside the model
        self.persona_ids = list(provided.persona_ids)
        features = provided.persona_features
        self.persona_router = None if features is None else PersonaRouter(torch.from_numpy(np.asarray(features)), count)

    @staticmethod
    def _cluster_experts(provided: Provided) -> list[dict]:
        adapter = provided.source("cluster_run").artifacts / "adapter"
        clusters = sorted(set(json.loads((adapter / "groups.json").read_text()).values()))
        return [read_adapter(adapter / cluster)[1] for cluster in clusters]

    def route(self, persona_idx: torch.Tensor) -> None:
        self.routing.persona_logits = self.persona_router(persona_idx) if self.persona_router is not None else None

    def model_step(self, batch: dict) -> torch.Tensor:
        self.route(batch["persona_idx"])
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        self.route(batch["persona_idx"])
        return greedy_generate(self.model, self.tokenizer, batch, max_new_tokens)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.routing.recording = True
        try:
            loss = super().training_step(batch, batch_idx)
        finally:
            self.routing.recording = False
        weights = torch.stack([layer.recorded for layer in self.layers.values()])  # [layers, rows, tokens, K]
        weights = weights[:, batch["attention_mask"].bool()]  # real tokens only: [layers, tokens, K]
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
        size = batch["input_ids"].shape[0]
        self.log("router/entropy", entropy, on_step=False, on_epoch=True, batch_size=size)
        for k, load in enumerate(weights.mean((0, 1))):
            self.log(f"router/load_{k}", load, on_step=False, on_epoch=True, batch_size=size)
        return loss

    @torch.no_grad()
    def save_adapter(self, directory: Path) -> None:
        layers = self.layers
        experts = [f"expert_{k}" for k in range(len(next(iter(layers.values())).lora_A))]
        for k, name in enumerate(experts):
            export_group(layers, k, Path(directory) / EXPERTS_DIR / name, self.base_name)
        tensors = {
            f"query_router.{name}.{part}": getattr(layer.query_router, part)
            for name, layer in layers.items()
            if layer.query_router is not None
            for part in ("weight", "bias")
        }
        if self.persona_router is not None:
            tensors |= {
                "persona_router.weight": self.persona_router.linear.weight,
                "persona_router.bias": self.persona_router.linear.bias,
                "persona_features": self.persona_router.features,
            }
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, Path(directory) / ROUTER_FILE)
        write_manifest(
            Path(directory),
            self.adapter_kind,
            method="moe_router",
            experts=experts,
            route_on=self.args.route_on,
            top_k=self.args.top_k,
            persona_ids=self.persona_ids,
        )

    @classmethod
    def served(cls, directory: Path, model, tokenizer) -> ServedMixture:
        manifest = read_manifest(directory)
        experts = [read_adapter(Path(directory) / EXPERTS_DIR / name)[1] for name in manifest["experts"]]
        targets, rank = engine_shape(experts)
        routing = MixtureRouting()
        layers = mixture_layers(
            model, routing, len(experts), targets, rank, rank, 0.0, manifest["route_on"], manifest["top_k"]
        )
        for k, factors in enumerate(experts):
            load_group(layers, k, factors)
        weights = load_file(Path(directory) / ROUTER_FILE)
        with torch.no_grad():
            for name, layer in layers.items():
                if layer.query_router is not None:
                    layer.query_router.weight.copy_(weights[f"query_router.{name}.weight"])
                    layer.query_router.bias.copy_(weights[f"query_router.{name}.bias"])
        persona_router = None
        if "persona_features" in weights:
            persona_router = PersonaRouter(weights["persona_features"], len(experts))
            persona_router.linear.load_state_dict(
                {"weight": weights["persona_router.weight"], "bias": weights["persona_router.bias"]}
            )
        device = next(model.parameters()).device
        model.to(device).eval()
        return ServedMixture(model, tokenizer, routing, persona_router, manifest["persona_ids"])


class ServedMixture(ServedModel):
    """The mixture rebuilt for serving; a persona the export does not know is routed on the
    mean of the known personas' features."""

    def __init__(self, model, tokenizer, routing, persona_router: PersonaRouter | None, persona_ids) -> None:
        self.model, self.tokenizer, self.routing, self.persona_router = model, tokenizer, routing, persona_router
        self.index = {p: i for i, p in enumerate(persona_ids)}
        if persona_router is not None:
            persona_router.to(next(model.parameters()).device)

    @torch.no_grad()
    def generate(self, batch: dict, persona_ids: list[str], max_new_tokens: int) -> torch.Tensor:
        if self.persona_router is None:
            self.routing.persona_logits = None
        else:
            table = self.persona_router.features
            features = torch.stack([table[self.index[p]] if p in self.index else table.mean(0) for p in persona_ids])
            self.routing.persona_logits = self.persona_router.linear(features)
        return greedy_generate(self.model, self.tokenizer, batch, max_new_tokens)
