"""Static prefix: the persona's description as plain text in the system turn of the
unified model; no training. The study's prefix tuning in its simplest form, and the
first method that changes prompts rather than weights: it asks the recipe for its own
context provider (the data config's, plus the description), and exports the unified
LoRA with a manifest that tells serving to build the same prompts."""

from dataclasses import dataclass, field, replace

from peft import PeftModel

from research.config import DataConfig
from research.datamodules.persona import default_context
from research.datamodules.prompts import ProfileContext
from research.modules.base import AdaptationModule, Needs, write_manifest


@dataclass
class PrefixStaticConfig:
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})


def with_description(data: DataConfig) -> ProfileContext:
    return replace(default_context(data), description=True)


class PrefixStaticModule(AdaptationModule):
    config_class = PrefixStaticConfig
    trainable = False
    adapter_kind = "lora+context"

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(context=with_description)

    def __init__(self, model, tokenizer, train, args: PrefixStaticConfig, provided) -> None:
        unified = PeftModel.from_pretrained(model, provided.source("unified_run").artifacts / "adapter")
        super().__init__(unified, tokenizer, train, args)
        self.model.requires_grad_(False)
        self.context = provided.context

    def save_adapter(self, directory) -> None:
        self.model.save_pretrained(directory)
        write_manifest(directory, self.adapter_kind, context=self.context.spec())
