"""Unified LoRA: one adapter trained on every persona's training dialogues.

The study's winner and the baseline every personalization method is compared to.
Defaults are the study's: r=8, alpha=16, dropout 0.05 on q_proj and v_proj.
"""

from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, get_peft_model

from research.config import FRACTION
from research.modules.base import AdaptationModule, Needs

RANK = {"min": 1}  # a LoRA rank (PEFT refuses 0)


@dataclass
class UnifiedLoraConfig:
    r: int = field(default=8, metadata=RANK)
    alpha: int = field(default=16, metadata={"min": 1})
    dropout: float = field(default=0.05, metadata=FRACTION)
    # the base model's Linear layers to adapt (the recipe checks that it has them before a run)
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"nonempty": True, "base_layers": True}
    )
    # share of personas held out of training, for cold-start evaluation (Needs.held_out); a
    # method with an adapter per persona cannot train without some of them
    held_out: float = field(default=0.0, metadata=FRACTION)

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


class UnifiedLoraModule(AdaptationModule):
    config_class = UnifiedLoraConfig
    adapter_kind = "lora"

    @classmethod
    def needs(cls, args: UnifiedLoraConfig) -> Needs:
        return Needs(held_out=args.held_out)

    def __init__(self, model, tokenizer, train, args: UnifiedLoraConfig, provided=None) -> None:
        super().__init__(get_peft_model(model, args.peft_config()), tokenizer, train, args)

    def save_adapter(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
