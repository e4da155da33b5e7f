"""Hybrid LoRA: the unified adapter frozen (merged into the base weights), one
per-persona LoRA trained on top. Each persona's exported adapter holds both parts
(unified and its own, concatenated), so it loads on the plain base model."""

from dataclasses import dataclass, field

from peft import PeftModel

from research.modules.group_lora import GroupLoraModule, read_adapter
from research.modules.unified_lora import UnifiedLoraConfig
from research.sources import source_artifact


@dataclass
class HybridLoraConfig(UnifiedLoraConfig):
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})


class HybridLoraModule(GroupLoraModule):
    config_class = HybridLoraConfig

    def __init__(self, model, tokenizer, train, args: HybridLoraConfig, datamodule) -> None:
        unified = source_artifact(args.unified_run, "adapter")
        _, self.unified = read_adapter(unified)
        model = PeftModel.from_pretrained(model, unified).merge_and_unload()
        groups = {persona: persona for persona in datamodule.persona_ids}
        super().__init__(
            model, tokenizer, train, args, datamodule, groups, args.target_modules, args.r, args.alpha, args.dropout
        )

    def adapter_below(self) -> dict:
        return self.unified
