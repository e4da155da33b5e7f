"""The method contract, and what every method shares: the assistant-token LM loss, AdamW
with linear warmup and decay, greedy batched generation with the KV cache.

A method is an `AdaptationModule` subclass with
  config_class      its settings (`method_args`), a dataclass; a field whose metadata has
                    `source_method` names a run the method builds on (a source)
  needs(args)       what it asks the recipe for: an adapter per persona or per cluster,
                    a clustering, persona features, a context provider for its prompts,
                    the training dialogues' recorded actions or user turns, augmented
                    training data, a persona-level split (personas held out of training)
  __init__(model, tokenizer, train, args, provided)
                    builds layers from what the recipe `provided` (resolved sources with
                    their artifacts on disk, groups, clustering, features); nothing else:
                    no MLflow, no writes into the datamodule, no edits of `args`
  group_of          persona -> adapter index when it owns an adapter per group (the
                    recipe routes batches with it)
  trainable         False: evaluated as built, no fit
  per_group_weights True when it trains weights of their own per group or persona (adapters,
                    prompts, vectors), which a step whose batch lacks the group leaves out
                    (a data-parallel fit must then look for unused weights each step)
  adapter_kind      what `save_adapter` writes: "none", "lora" (PEFT LoRA directories),
                    "lora+context" (LoRA plus the context provider its prompts need, in
                    manifest.json), "prompt+lora" (learned prompts per group in PEFT's
                    prompt-tuning format over a LoRA, modules/soft_prompts.py), "module"
                    (the method's own layout, manifest `method`: serving rebuilds it with
                    the method's `served` and answers its personas in batches of their
                    own); serving dispatches on it (read_manifest)
  outputs()         metrics and artifacts it made while being built, for the recipe to log
A method file holds only what makes it different (how it wraps the base model, extra
loss terms, how a batch picks its adapter).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from research.config import ClusteringConfig, DataConfig, TrainConfig
from research.data.augment import Augmentation
from research.datamodules.prompts import ContextProvider


@dataclass(frozen=True)
class Needs:
    groups: Literal["persona", "cluster"] | None = None  # an adapter per persona / per cluster
    clustering: ClusteringConfig | None = None  # personas clustered (cluster groups, merge neighbourhoods)
    persona_features: str | None = None  # description (this embedder; "" = bundled) + behaviour features
    # the method's own prompts, built from the data config; None: the data config's
    context: Callable[[DataConfig], ContextProvider] | None = None
    actions: bool = False  # each training dialogue's recorded actions (auxiliary targets)
    user_turns: bool = False  # each training dialogue's user turns, as text
    augment: Augmentation | None = None  # reworded copies of the training dialogues to train on too
    # share of personas held out of training entirely (a persona-level split, the same personas
    # for every run with the same share): none of their dialogues reaches a training step or the
    # val loss; they are evaluated like every persona, and apart (held_out/<split>/<metric>)
    held_out: float = 0.0


@dataclass(frozen=True)
class Source:
    """A finished run a method builds on, checked by the recipe, its artifacts on disk."""

    run_id: str
    method: str
    artifacts: Path


@dataclass
class Provided:
    persona_ids: list[str]
    trained_personas: set[str]  # personas whose training dialogues reach training
    held_out: set[str] = field(default_factory=set)  # personas held out of training (needs.held_out)
    sources: dict[str, list[Source]] = field(default_factory=dict)  # config field -> its runs
    groups: dict[str, str] | None = None  # persona -> group name (needs.groups)
    clustering: Any = None  # research.evaluation.clustering.Clustering (needs.clustering)
    persona_features: np.ndarray | None = None  # one row per persona_ids (needs.persona_features)
    context: ContextProvider | None = None  # the prompts the datamodule was built with
    # training dialogue id -> each assistant turn's actions, in order (needs.actions);
    # batches carry `dialogue_id` to look them up
    actions: dict[str, list[list[dict]]] | None = None
    # training dialogue id -> (its persona, its user turns' text in order) (needs.user_turns);
    # held-out personas' dialogues are not training dialogues
    user_turns: dict[str, tuple[str, list[str]]] | None = None

    def source(self, name: str) -> Source:
        return self.sources[name][0]


def write_manifest(directory: Path, kind: str, **fields) -> None:
    """`directory/manifest.json`: the adapter's kind and what serving needs beside its weights."""
    (directory / "manifest.json").write_text(json.dumps({"kind": kind, **fields}, indent=1, sort_keys=True))


def read_manifest(directory: Path) -> dict:
    """The adapter's manifest; an adapter without one is plain LoRA."""
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"kind": "lora"}


def group_indices(groups: dict[str, str], trained_personas: set[str]) -> tuple[list[str], dict[str, int]]:
    """(sorted group names, persona -> group index) for a method that trains one set of
    weights per group; a group with no training dialogues is an error."""
    names = sorted(set(groups.values()))
    trained = {groups[p] for p in trained_personas}
    if empty := [g for g in names if g not in trained]:
        raise ValueError(f"group {empty[0]} has no training dialogues ({len(empty)} such groups)")
    index = {name: i for i, name in enumerate(names)}
    return names, {persona: index[group] for persona, group in groups.items()}


def source_fields(config_class, args=None) -> dict[str, str]:
    """Config field -> the method its runs must be ("*": any), from field metadata. A field
    whose metadata has `used_when` (a bool field's name) is a source only when `args` has
    that field true."""
    fields = [f for f in dataclasses.fields(config_class) if "source_method" in f.metadata]
    if args is not None:
        fields = [f for f in fields if "used_when" not in f.metadata or getattr(args, f.metadata["used_when"])]
    return {f.name: f.metadata["source_method"] for f in fields}


@torch.no_grad()
def greedy_generate(model, tokenizer, batch: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of each left-padded prompt with the KV cache (new tokens only).
    The prompt is `input_ids`, or `inputs_embeds` (soft prompts in front; transformers then
    returns the new tokens only)."""
    prompt = {key: batch[key] for key in ("input_ids", "inputs_embeds") if key in batch}
    out = model.generate(
        **prompt,
        attention_mask=batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[:, batch["input_ids"].shape[1] :] if "input_ids" in prompt else out


def fit_attention(setting: str, device: torch.device) -> str | None:
    """The attention kernel to fit with (None: keep the loaded one); see TrainConfig.attention."""
    if setting == "auto":
        return "eager" if device.type == "cpu" else None
    return setting


def set_attention(model, implementation: str | None) -> str:
    """Switch `model`'s attention kernel (a PEFT wrapper passes it to its base) when
    `implementation` is given; returns the one it had."""
    current = model.config._attn_implementation
    if implementation and implementation != current:
        model.set_attn_implementation(implementation)
    return current


class AdaptationModule(L.LightningModule):
    config_class: type  # the method's own config dataclass (its `method_args`)
    trainable = True  # False: evaluate the model as built, no fit
    per_group_weights = False
    adapter_kind = "none"
    group_of: dict[str, int] | None = None

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs()

    def __init__(self, model, tokenizer, train: TrainConfig, args, provided: Provided | None = None) -> None:
        super().__init__()
        self.model, self.tokenizer, self.train_cfg, self.args = model, tokenizer, train, args

    def outputs(self) -> tuple[dict[str, float], dict[str, Any]]:
        """(metrics, artifacts) for the recipe to log; an artifact maps a relative path to a
        dict (JSON), a polars DataFrame (Parquet) or bytes."""
        return {}, {}

    def on_fit_start(self) -> None:
        self.train()  # from_pretrained leaves the model in eval mode: no dropout otherwise
        self._loaded_attention = set_attention(self.model, fit_attention(self.train_cfg.attention, self.device))

    def on_fit_end(self) -> None:
        set_attention(self.model, self._loaded_attention)

    def model_step(self, batch: dict) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # under DDP each device scores its share of val: the epoch's loss is their mean
        loss = self.model_step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.train_cfg.lr, weight_decay=self.train_cfg.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = get_linear_schedule_with_warmup(optimizer, int(self.train_cfg.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        return greedy_generate(self.model, self.tokenizer, batch, max_new_tokens)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, directory: Path) -> None:
        """Write the method's adapter(s) (`adapter_kind`) into `directory`."""

    @classmethod
    def served(cls, directory: Path, model, tokenizer) -> ServedModel:
        """Adapter kind "module": the exported `directory` rebuilt on `model` (a fresh copy of
        the base) for answering requests."""
        raise NotImplementedError(f"{cls.__name__} exports no adapter of kind 'module'")


class ServedModel:
    """What serving answers through for an adapter of kind "module"."""

    def generate(self, batch: dict, persona_ids: list[str], max_new_tokens: int) -> torch.Tensor:
        """The new tokens for each left-padded prompt of `batch`, row i asked by `persona_ids[i]`."""
        raise NotImplementedError
