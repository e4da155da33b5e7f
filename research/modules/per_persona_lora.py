"""Per-persona LoRA: one adapter per persona, trained on that persona's dialogues only.

The study trained 200 separate jobs (~200 GPU hours); here all adapters live in one
model and train in one loop over the same mixed batches as unified (group_lora.py).
Defaults are the unified ones, as in the study.
"""

from dataclasses import dataclass

from research.modules.base import Needs
from research.modules.group_lora import GroupLoraModule
from research.modules.unified_lora import UnifiedLoraConfig


@dataclass
class PerPersonaLoraConfig(UnifiedLoraConfig):
    pass


class PerPersonaLoraModule(GroupLoraModule):
    config_class = PerPersonaLoraConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="persona")
