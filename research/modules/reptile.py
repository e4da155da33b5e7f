"""Reptile (the seeds' strategy 8): a LoRA initialisation meta-learned across personas, then
a few adaptation steps per persona on its own training dialogues.

Meta-training (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms",
the batched version): each outer step draws `meta_batch` personas and `support_size` of
each one's training dialogues; every drawn persona starts from the initialisation theta,
takes `inner_steps` Adam steps (beta1 = 0, as the paper's inner loop) at `inner_lr` on its
own support dialogues, and theta moves toward the mean of the adapted weights:

    theta <- theta + epsilon * mean_p (phi_p - theta),   epsilon = outer_lr, annealed linearly to 0

The drawn personas adapt in parallel in the group engine (group_lora.py): each is one
group, each batch row is routed to its persona's group and the loss is the sum of each
persona's own mean token loss, so every group's inner steps are its persona's alone. It
runs when the fit starts, on the training dialogues the datamodule trains on, and logs
`meta/support_loss` (the drawn personas' loss at theta, before their inner steps) per
outer step.

Adaptation: every persona's group starts at theta and the usual loop trains all of them
at once on mixed batches of their own training dialogues (per_persona_lora from theta:
`train.max_epochs`, `train.lr`, early stopping on the val loss).

Exported like per_persona_lora (a PEFT LoRA per persona, groups.json) plus theta itself
as `_meta_init/`, the manifest's `default`: promoted for `all`, it answers personas that
were never adapted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from research.modules.base import Needs, write_manifest
from research.modules.group_lora import GroupLoraModule, write_adapter
from research.modules.unified_lora import UnifiedLoraConfig

META_INIT = "_meta_init"  # the export's meta-learned initialisation (a persona may not take this name)


@dataclass
class ReptileConfig(UnifiedLoraConfig):
    outer_steps: int = field(default=100, metadata={"min": 0})  # 0: adaptation from PEFT's initialisation
    meta_batch: int = field(default=8, metadata={"min": 1})  # personas per outer step
    # training dialogues per persona per outer step (the seeds' 5)
    support_size: int = field(default=5, metadata={"min": 1})
    inner_steps: int = field(default=3, metadata={"min": 0})
    inner_lr: float = field(default=1e-3, metadata={"gt": 0})  # Adam, beta1 = 0
    # epsilon at the first outer step, annealed linearly to 0 (Nichol et al.)
    outer_lr: float = field(default=1.0, metadata={"gt": 0, "max": 1})


def persona_token_loss(logits: torch.Tensor, labels: torch.Tensor, group_idx: torch.Tensor) -> torch.Tensor:
    """Sum over the batch's groups of each group's mean next-token loss: every group's
    gradient is its own rows' mean loss, whatever the other groups hold."""
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="none")
    counted = (labels[:, 1:] != -100).flatten().float()
    rows = group_idx.repeat_interleave(labels.shape[1] - 1)
    groups = int(group_idx.max()) + 1
    total = torch.zeros(groups, device=logits.device).index_add(0, rows, losses * counted)
    tokens = torch.zeros(groups, device=logits.device).index_add(0, rows, counted)
    present = tokens > 0
    return (total[present] / tokens[present]).sum()


class ReptileModule(GroupLoraModule):
    config_class = ReptileConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="persona")

    def __init__(self, model, tokenizer, train, args: ReptileConfig, provided) -> None:
        if META_INIT in provided.persona_ids:
            raise ValueError(f"reptile: persona id {META_INIT!r} is the name of the meta-learned initialisation")
        super().__init__(model, tokenizer, train, args, provided)
        layers = list(self.layers.values())
        # theta: PEFT's initialisation (A random, B zero), frozen outside the outer updates
        self.meta_A = nn.ParameterList(nn.Parameter(layer.lora_A[0].detach().clone(), False) for layer in layers)
        self.meta_B = nn.ParameterList(nn.Parameter(torch.zeros_like(layer.lora_B[0]), False) for layer in layers)

    def set_groups(self, groups: list[int]) -> None:
        """Put theta into each of `groups`."""
        with torch.no_grad():
            for layer, a, b in zip(self.layers.values(), self.meta_A, self.meta_B, strict=True):
                for g in groups:
                    layer.lora_A[g].copy_(a)
                    layer.lora_B[g].copy_(b)

    def reptile_step(self, batch: dict, epsilon: float) -> float:
        """One outer step on `batch` (the support dialogues of the drawn personas, routed by
        group_idx): their groups start at theta and take the inner steps, then theta moves
        `epsilon` of the way to their mean. Returns the drawn personas' mean support loss at
        theta (NaN without inner steps)."""
        groups = batch["group_idx"].unique().tolist()
        self.set_groups(groups)
        params = [p for layer in self.layers.values() for g in groups for p in (layer.lora_A[g], layer.lora_B[g])]
        optimizer = torch.optim.Adam(params, lr=self.args.inner_lr, betas=(0.0, 0.999))
        self.router.route(batch["group_idx"])
        losses = []
        with torch.enable_grad():
            for _ in range(self.args.inner_steps):
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = persona_token_loss(logits, batch["labels"], batch["group_idx"])
                losses.append(loss.item() / len(groups))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            for layer, a, b in zip(self.layers.values(), self.meta_A, self.meta_B, strict=True):
                # mean_p (phi_p - theta): exactly zero when no persona moved (a mean of equal
                # values need not round back to them)
                a += epsilon * (torch.stack([layer.lora_A[g] for g in groups]) - a).mean(0)
                b += epsilon * (torch.stack([layer.lora_B[g] for g in groups]) - b).mean(0)
        return losses[0] if losses else float("nan")

    def meta_train(self, dialogues: dict[int, list[dict]], collate) -> None:
        """The outer loop over `dialogues` (group -> its training examples), then every
        group set to theta for adaptation."""
        groups = sorted(dialogues)
        for outer in range(self.args.outer_steps):
            drawn = [groups[i] for i in torch.randperm(len(groups))[: self.args.meta_batch].tolist()]
            rows = []
            for g in drawn:
                own = dialogues[g]
                rows += [own[i] for i in torch.randperm(len(own))[: self.args.support_size].tolist()]
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in collate(rows).items()}
            epsilon = self.args.outer_lr * (1 - outer / self.args.outer_steps)
            loss = self.reptile_step(batch, epsilon)
            if self.logger is not None and self.args.inner_steps:
                self.logger.log_metrics({"meta/support_loss": loss}, step=outer)
        self.set_groups(list(range(len(self.group_names))))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        loader = self.trainer.datamodule.train_dataloader()  # what the fit trains on (held-out personas left out)
        dialogues: dict[int, list[dict]] = {}
        for example in loader.dataset:
            dialogues.setdefault(self.group_of[example["persona_id"]], []).append(example)
        self.meta_train(dialogues, loader.collate_fn)

    def save_adapter(self, directory: Path) -> None:
        super().save_adapter(directory)
        theta = {
            name: (layer.scaling * a, b)
            for (name, layer), a, b in zip(self.layers.items(), self.meta_A, self.meta_B, strict=True)
        }
        write_adapter(theta, Path(directory) / META_INIT, self.base_name)
        write_manifest(Path(directory), self.adapter_kind, default=META_INIT)
