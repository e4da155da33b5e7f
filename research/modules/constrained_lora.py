"""L2-constrained per-persona LoRA: each persona starts at the unified adapter and is
pulled back to it by lambda * ||W_persona - W_unified||^2.

The persona's weights are W_unified + scaling * B A (the hybrid set-up), so the
penalty is lambda * ||scaling * B A||_F^2: zero at initialisation (B = 0), measured
on the weights rather than on the LoRA factors, so it does not depend on how a
change is factored into A and B, and the persona rank is free of the unified one.
Only the personas in the batch are penalised: an absent adapter must not move.
"""

from dataclasses import dataclass, field

import torch

from research.modules.hybrid_lora import HybridLoraConfig, HybridLoraModule
from research.modules.unified_lora import RANK


@dataclass
class ConstrainedLoraConfig(HybridLoraConfig):
    r: int = field(default=4, metadata=RANK)  # the study's grid: 2, 4, 8
    alpha: int = field(default=8, metadata={"min": 1})
    l2_lambda: float = field(default=0.1, metadata={"min": 0})  # the study's grid: 0.01 - 0.5


class ConstrainedLoraModule(HybridLoraModule):
    config_class = ConstrainedLoraConfig

    def l2_penalty(self) -> torch.Tensor:
        """sum over the batch's personas and adapted layers of ||scaling * B A||_F^2."""
        total = torch.zeros((), device=self.device)
        for layer in self.layers.values():
            for group in self.router.groups:
                a, b = layer.lora_A[group], layer.lora_B[group]
                # ||B A||_F^2 = trace((B^T B)(A A^T)): r x r products instead of out x in
                total = total + layer.scaling**2 * ((b.T @ b) * (a @ a.T)).sum()
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # routes the batch, logs train/loss
        penalty = self.l2_penalty()
        self.log("train/l2_penalty", penalty, batch_size=batch["input_ids"].shape[0])
        return loss + self.args.l2_lambda * penalty
