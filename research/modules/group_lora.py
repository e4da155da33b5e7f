"""The group-adapter engine: one LoRA per group (a persona or a cluster) inside one model.

Every targeted Linear gets G low-rank adapters and each batch row is routed to its
group's adapter (the BGMV idea of Punica / S-LoRA, BatchLoRA of mLoRA): all groups
train in the same shuffled mixed batches and the same loop as one unified adapter,
with the base model loaded once, and generate in mixed-group batches.

Each group's A and B are Parameters of their own. A group absent from a batch takes
no part in the graph, so its gradient stays None and AdamW skips it: it does not
drift on momentum or weight decay. Each group exports as a standard PEFT adapter
directory (`export_group`) that plain PEFT loads with the same outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch import nn

from research.modules.base import AdaptationModule, Provided, group_indices

PEFT_PREFIX = "base_model.model."  # how PEFT names a module's weights in adapter_model.safetensors


class GroupRouter:
    """The group of each row of the current batch, shared by every adapted layer."""

    def __init__(self) -> None:
        self.version = 0
        self.groups: list[int] = []
        self.inverse: torch.Tensor | None = None

    def route(self, group_idx: torch.Tensor) -> None:
        unique, self.inverse = torch.unique(group_idx, return_inverse=True)
        self.groups = unique.tolist()
        self.version += 1


class GroupLoraLinear(nn.Module):
    """`base(x) + scaling * B_g A_g x` with g the row's group (PEFT's LoRA, per row)."""

    def __init__(self, base: nn.Linear, router: GroupRouter, groups: int, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base, self.router, self.r, self.scaling = base, router, r, alpha / r
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(r, base.in_features)) for _ in range(groups))
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(base.out_features, r)) for _ in range(groups))
        for a in self.lora_A:  # PEFT's init: A random, B zero, so every adapter starts as the identity
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self._frozen_rows: tuple | None = None  # (router version, A rows, B rows) while no gradient is taken

    def row_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of each row's group: [rows, r, in] and [rows, out, r]. Only the groups
        present are stacked; without autograd the stack is reused for the whole generation."""
        grad = torch.is_grad_enabled()
        if not grad and self._frozen_rows is not None and self._frozen_rows[0] == self.router.version:
            return self._frozen_rows[1:]
        a = torch.stack([self.lora_A[g] for g in self.router.groups])[self.router.inverse]
        b = torch.stack([self.lora_B[g] for g in self.router.groups])[self.router.inverse]
        self._frozen_rows = None if grad else (self.router.version, a, b)
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        a, b = self.row_weights()
        if x.shape[0] != a.shape[0]:
            raise RuntimeError(f"batch of {x.shape[0]} rows routed with {a.shape[0]} group ids")
        delta = torch.bmm(torch.bmm(self.dropout(x).to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2))
        return out + (delta * self.scaling).to(out.dtype)

    def delta_weight(self, group: int) -> torch.Tensor:
        """scaling * B_g A_g, the group's change to the base weight."""
        return self.scaling * self.lora_B[group] @ self.lora_A[group]


def inject(
    model: nn.Module, target_modules, groups: int, r: int, alpha: float, dropout: float, router=None, layer_class=None
):
    """Replace every Linear whose name ends in a target with a GroupLoraLinear (or
    `layer_class(base, router, groups, r, alpha, dropout)`, sharing `router`).
    Returns (router, {module name in the base model: layer})."""
    router, layers = router or GroupRouter(), {}
    layer_class = layer_class or GroupLoraLinear
    targets = tuple(target_modules)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            layer = layer_class(module, router, groups, r, alpha, dropout)
            setattr(model.get_submodule(parent_name), child, layer)
            layers[name] = layer
    if not layers:
        raise ValueError(f"no Linear layer named {', '.join(targets)} in {type(model).__name__}")
    return router, layers


def read_adapter(directory: str | Path) -> tuple[LoraConfig, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A PEFT LoRA directory as (config, {module name: (scaling * A, B)})."""
    directory = Path(directory)
    config = LoraConfig.from_pretrained(directory)
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    weights = load_file(directory / "adapter_model.safetensors")
    factors = {}
    for key, a in weights.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
            factors[name] = (scaling * a, weights[key.replace("lora_A", "lora_B")])
    return config, factors


def export_group(
    layers: dict[str, GroupLoraLinear],
    group: int,
    directory: Path,
    base_model: str,
    below: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Write group `group` as a standard PEFT LoRA directory. `below` (module name ->
    (scaling * A, B)) is a frozen adapter the group was trained on top of: it is
    concatenated in, so the directory holds the whole change to the plain base model
    (B1 A1 + B2 A2 = [B1 B2] [A1; A2]), at rank r + its rank, with scaling 1."""
    below = below or {}
    factors = {}
    for name in sorted(layers.keys() | below.keys()):
        a, b = [], []
        if name in below:
            a.append(below[name][0])
            b.append(below[name][1])
        if name in layers:
            a.append(layers[name].scaling * layers[name].lora_A[group].detach())
            b.append(layers[name].lora_B[group].detach())
        factors[name] = (torch.cat(a), torch.cat(b, dim=1))
    write_adapter(factors, directory, base_model)


def write_adapter(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], directory: Path, base_model: str) -> None:
    """{module name: (scaling * A, B)} as a standard PEFT LoRA directory (scaling 1)."""
    factors = {name: (a.detach().float().cpu(), b.detach().float().cpu()) for name, (a, b) in factors.items()}
    rank = max(a.shape[0] for a, _ in factors.values())
    tensors = {}
    for name, (a, b) in factors.items():  # zero-padded to one rank (PEFT wants one r per adapter)
        pad = rank - a.shape[0]
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = torch.nn.functional.pad(a, (0, 0, 0, pad)).contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = torch.nn.functional.pad(b, (0, pad)).contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors")
    LoraConfig(
        r=rank,
        lora_alpha=rank,  # scaling 1: the scalings are folded into A above
        target_modules=sorted({n.split(".")[-1] for n in factors}),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    ).save_pretrained(directory)


def load_group(layers: dict[str, GroupLoraLinear], group: int, factors: dict[str, tuple]) -> None:
    """Put an adapter ({module name: (scaling * A, B)}, e.g. from `read_adapter`) into
    group `group`, zero-padded to the engine's rank; layers it does not adapt stay zero."""
    if unknown := sorted(factors.keys() - layers.keys()):
        raise ValueError(f"adapter has weights for {unknown[0]}, which the engine does not adapt")
    for name, layer in layers.items():
        with torch.no_grad():
            layer.lora_A[group].zero_()
            layer.lora_B[group].zero_()
            if name not in factors:
                continue
            a, b = factors[name]
            if a.shape[0] > layer.r:
                raise ValueError(f"{name}: adapter rank {a.shape[0]} exceeds the engine's rank {layer.r}")
            layer.lora_A[group][: a.shape[0]] = a / layer.scaling
            layer.lora_B[group][:, : b.shape[1]] = b


def engine_shape(adapters: list[dict[str, tuple]]) -> tuple[set[str], int]:
    """(target module names, rank) an engine needs to hold all of `adapters`."""
    targets = {name.split(".")[-1] for factors in adapters for name in factors}
    return targets, max(a.shape[0] for factors in adapters for a, _ in factors.values())


class GroupLoraModule(AdaptationModule):
    """Base of every method that owns an adapter per group. `groups` maps each persona to
    its group's name (default: the groups the recipe provided, as the method's needs asked);
    the adapters' shape defaults to the LoRA settings of `args` (target_modules, r, alpha,
    dropout). A subclass decides the grouping and what the model starts from."""

    adapter_kind = "lora"
    per_group_weights = True

    def __init__(
        self,
        model,
        tokenizer,
        train,
        args,
        provided: Provided,
        groups: dict[str, str] | None = None,
        shape: tuple | None = None,  # (targets, r, alpha, dropout)
    ):
        groups = groups or provided.groups
        targets, r, alpha, dropout = shape or (args.target_modules, args.r, args.alpha, args.dropout)
        # a method built from other runs' adapters (not trained) may hold untrained groups
        trained = provided.trained_personas if self.trainable else set(groups)
        self.group_names, group_of = group_indices(groups, trained)
        self.persona_groups = groups
        model.requires_grad_(False)
        self.base_name = model.name_or_path
        self.router, self.layers = inject(model, targets, len(self.group_names), r, alpha, dropout)
        super().__init__(model, tokenizer, train, args, provided)
        self.group_of = group_of

    def model_step(self, batch: dict) -> torch.Tensor:
        self.router.route(batch["group_idx"])
        return super().model_step(batch)

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        self.router.route(batch["group_idx"])
        return super().generate(batch, max_new_tokens)

    def adapter_below(self) -> dict | None:
        """A frozen adapter the groups sit on (see export_group); None for the plain base."""
        return None

    def save_adapter(self, directory: Path) -> None:
        """One PEFT directory per group, and groups.json: persona -> group directory."""
        for g, name in enumerate(self.group_names):
            export_group(self.layers, g, directory / name, self.base_name, self.adapter_below())
        (directory / "groups.json").write_text(json.dumps(self.persona_groups, indent=1, sort_keys=True))
