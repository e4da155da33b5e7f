"""Augmented LoRA: per-persona LoRA (or, with `hybrid=true`, per-persona LoRA on the frozen
unified adapter, as hybrid_lora) trained on each persona's training dialogues plus
reworded copies of them (research/data/augment.py: synonyms, politeness framings,
numbers as words or digits; the persona's replies unchanged), up to `per_persona`
training dialogues per persona. The study's answer to "20 examples per adapter are too
few". `vary_context=true` also redraws the copies' context: an ablation, since the
unchanged reply may not fit the new context. Augmented dialogues never enter val or test.
"""

from dataclasses import dataclass, field

from research.config import SEED
from research.data.augment import RULES, Augmentation
from research.modules.base import Needs
from research.modules.group_lora import GroupLoraModule
from research.modules.hybrid_lora import merged_unified
from research.modules.unified_lora import UnifiedLoraConfig


@dataclass
class AugmentedLoraConfig(UnifiedLoraConfig):
    # training dialogues per persona after augmentation, originals included
    per_persona: int = field(default=60, metadata={"min": 1})
    rules: tuple[str, ...] = field(default=RULES, metadata={"choices": RULES, "nonempty": True})
    vary_context: bool = False  # ablation: redraw the copies' context (their replies may then be wrong)
    augment_seed: int = field(default=0, metadata=SEED)
    hybrid: bool = False  # train on top of the frozen unified adapter (unified_run)
    # with hybrid: a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora", "used_when": "hybrid"})


class AugmentedLoraModule(GroupLoraModule):
    config_class = AugmentedLoraConfig

    @classmethod
    def needs(cls, args: AugmentedLoraConfig) -> Needs:
        augmentation = Augmentation(args.per_persona, tuple(args.rules), args.vary_context, args.augment_seed)
        return Needs(groups="persona", augment=augmentation)

    def __init__(self, model, tokenizer, train, args: AugmentedLoraConfig, provided) -> None:
        model, self.unified = merged_unified(model, provided) if args.hybrid else (model, None)
        super().__init__(model, tokenizer, train, args, provided)

    def adapter_below(self) -> dict | None:
        return self.unified
