"""What every method shares: the assistant-token LM loss, AdamW with linear warmup
and decay, greedy batched generation with the KV cache, and adapter export.

A method file holds only what makes it different (how it wraps the base model,
extra loss terms, how a batch picks its adapter).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from transformers import get_linear_schedule_with_warmup

from research.config import TrainConfig


@torch.no_grad()
def greedy_generate(model, tokenizer, batch: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of each left-padded prompt with the KV cache (new tokens only)."""
    out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[:, batch["input_ids"].shape[1] :]


class AdaptationModule(L.LightningModule):
    config_class: type  # the method's own config dataclass (its `method_args`)
    trainable = True  # False: evaluate the model as built, no fit

    def __init__(self, model, tokenizer, train: TrainConfig, args) -> None:
        super().__init__()
        self.model, self.tokenizer, self.train_cfg, self.args = model, tokenizer, train, args

    def on_fit_start(self) -> None:
        self.train()  # from_pretrained leaves the model in eval mode: no dropout otherwise

    def model_step(self, batch: dict) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model_step(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

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

    def save_adapter(self, directory: Path) -> bool:
        """Write the method's adapter(s) in PEFT format; False when there is none."""
        return False
