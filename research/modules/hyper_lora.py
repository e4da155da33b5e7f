"""Profile-to-adapter: a hypernetwork maps what is known of a persona before any training on
it to that persona's LoRA weights, so a new persona gets an adapter with no training step.

The profile is the persona's features (persona_features: its description's embedding and
the behaviour statistics of whatever history it has, standardised with the training
personas' means and spreads). An encoder (two layers, GELU) turns it into a code c_p of
`code_size`; in every adapted layer the persona's LoRA is

    A (shared by every persona),   B_p = B + reshape(G c_p)   [out, r]

with A, B, G and the encoder trained jointly across the training personas on mixed
batches, each row getting its own persona's generated B (the group engine's per-row
LoRA, the factors computed instead of stored). G starts at zero, so every persona starts
with the same adapter (B = 0: the base model) and what sets personas apart is learned, as
in the Profile-to-PEFT / HyperLoRA line of work (a hypernetwork from a profile or task
description to LoRA weights; here the smallest form of it: one generated factor).

A persona-level split holds `held_out` of the personas out of training (Needs.held_out):
none of their dialogues reaches a training step or the val loss, so their test scores
(`held_out/test/<metric>`, and `research compare --split held_out/test`) are what the
hypernetwork gives a persona it never trained on. Compare them with unified_lora,
retrieval and user_embedding run with the same `method_args.held_out` (their lineage then
matches): the generic adapter, the persona's history in the prompt, the mean vector.

Exported as standard PEFT LoRA directories, one per persona (held-out ones included), and
groups.json, like the group engine's export: serving needs nothing new. Beside them,
`hypernetwork.safetensors` holds what makes an adapter for any profile (`persona_adapter`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from research.config import FRACTION
from research.modules.base import AdaptationModule, Needs, Provided, greedy_generate
from research.modules.group_lora import write_adapter
from research.modules.unified_lora import UnifiedLoraConfig

HYPERNETWORK_FILE = "hypernetwork.safetensors"


@dataclass
class HyperLoraConfig(UnifiedLoraConfig):
    # share of personas the hypernetwork never trains on (evaluated apart)
    held_out: float = field(default=0.2, metadata=FRACTION)
    code_size: int = field(default=64, metadata={"min": 1})  # the profile code the hypernetwork generates B from
    embedder: str = field(default="", metadata={"embedder": True})  # the description embedder; empty: bundled MiniLM


class ProfileCodes:
    """The current batch's persona codes, shared by every adapted layer: one code per
    distinct persona and, per row, which one is its."""

    def __init__(self) -> None:
        self.codes: torch.Tensor | None = None  # [personas in the batch, code_size]
        self.inverse: torch.Tensor | None = None  # [rows]


class HyperLoraLinear(nn.Module):
    """`base(x) + scaling * B_p A x`, B_p = B + reshape(G c_p) from the row's persona code."""

    def __init__(self, base: nn.Linear, codes: ProfileCodes, r: int, alpha: float, dropout: float, code_size: int):
        super().__init__()
        self.base, self.codes, self.r, self.scaling = base, codes, r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.generator = nn.Parameter(torch.zeros(base.out_features * r, code_size))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def persona_B(self, codes: torch.Tensor) -> torch.Tensor:
        """[personas, out, r]: each code's B."""
        return self.lora_B + (codes @ self.generator.T).view(-1, *self.lora_B.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        b = self.persona_B(self.codes.codes)[self.codes.inverse]  # [rows, out, r]
        h = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T  # [rows, tokens, r]
        return out + (torch.bmm(h, b.transpose(1, 2)) * self.scaling).to(out.dtype)


class HyperLoraModule(AdaptationModule):
    config_class = HyperLoraConfig
    adapter_kind = "lora"

    @classmethod
    def needs(cls, args: HyperLoraConfig) -> Needs:
        return Needs(persona_features=args.embedder, held_out=args.held_out)

    def __init__(self, model, tokenizer, train, args: HyperLoraConfig, provided: Provided) -> None:
        model.requires_grad_(False)
        self.base_name = model.name_or_path
        codes, layers = ProfileCodes(), {}
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and name.split(".")[-1] in args.target_modules:
                parent, _, child = name.rpartition(".")
                layers[name] = HyperLoraLinear(module, codes, args.r, args.alpha, args.dropout, args.code_size)
                setattr(model.get_submodule(parent), child, layers[name])
        if not layers:
            raise ValueError(f"no Linear layer named {', '.join(args.target_modules)} in {type(model).__name__}")
        super().__init__(model, tokenizer, train, args, provided)
        self.codes, self.layers = codes, layers
        self.persona_ids = list(provided.persona_ids)
        features = torch.from_numpy(np.asarray(provided.persona_features, dtype=np.float32))
        # standardised with the training personas' statistics only: held-out profiles are inputs, never fitted
        trained = torch.tensor([p in provided.trained_personas for p in self.persona_ids])
        mean, spread = features[trained].mean(0), features[trained].std(0, correction=0)
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_scale", torch.where(spread > 1e-6, spread, torch.ones_like(spread)))
        self.register_buffer("features", features)
        self.encoder = nn.Sequential(
            nn.Linear(features.shape[1], args.code_size), nn.GELU(), nn.Linear(args.code_size, args.code_size)
        )

    def code(self, features: torch.Tensor) -> torch.Tensor:
        """[personas, code_size]: the codes of raw profile rows [personas, features]."""
        return self.encoder((features.to(self.feature_mean) - self.feature_mean) / self.feature_scale)

    def route(self, persona_idx: torch.Tensor) -> None:
        unique, self.codes.inverse = torch.unique(persona_idx, return_inverse=True)
        self.codes.codes = self.code(self.features[unique])

    def model_step(self, batch: dict) -> torch.Tensor:
        self.route(batch["persona_idx"])
        return super().model_step(batch)

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        self.route(batch["persona_idx"])
        return greedy_generate(self.model, self.tokenizer, batch, max_new_tokens)

    @torch.no_grad()
    def persona_adapter(self, features: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """A profile's LoRA, {module name: (scaling * A, B_p)}, from its raw feature row: no training step."""
        code = self.code(features[None])
        return {name: (layer.scaling * layer.lora_A, layer.persona_B(code)[0]) for name, layer in self.layers.items()}

    def save_adapter(self, directory: Path) -> None:
        """A PEFT LoRA directory per persona, groups.json, and the hypernetwork."""
        directory = Path(directory)
        for index, persona in enumerate(self.persona_ids):
            write_adapter(self.persona_adapter(self.features[index]), directory / persona, self.base_name)
        (directory / "groups.json").write_text(json.dumps({p: p for p in self.persona_ids}, indent=1, sort_keys=True))
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors |= {"feature_mean": self.feature_mean, "feature_scale": self.feature_scale, "features": self.features}
        for name, layer in self.layers.items():
            tensors |= {f"{name}.{part}": getattr(layer, part) for part in ("lora_A", "lora_B", "generator")}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, directory / HYPERNETWORK_FILE)
