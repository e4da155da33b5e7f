"""Hybrid LoRA: the unified adapter frozen (merged into the base weights), one
per-persona LoRA trained on top. Each persona's exported adapter holds both parts
(unified and its own, concatenated), so it loads on the plain base model."""

from dataclasses import dataclass, field

from peft import PeftModel

from research.modules.base import Needs
from research.modules.group_lora import GroupLoraModule, read_adapter
from research.modules.unified_lora import UnifiedLoraConfig


@dataclass
class HybridLoraConfig(UnifiedLoraConfig):
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})


def merged_unified(model, provided) -> tuple:
    """(the base with the unified run's adapter merged in and frozen, that adapter's factors
    for export_group's `below`)."""
    unified = provided.source("unified_run").artifacts / "adapter"
    return PeftModel.from_pretrained(model, unified).merge_and_unload(), read_adapter(unified)[1]


class HybridLoraModule(GroupLoraModule):
    config_class = HybridLoraConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="persona")

    def __init__(self, model, tokenizer, train, args: HybridLoraConfig, provided) -> None:
        model, self.unified = merged_unified(model, provided)
        super().__init__(model, tokenizer, train, args, provided)

    def adapter_below(self) -> dict:
        return self.unified
