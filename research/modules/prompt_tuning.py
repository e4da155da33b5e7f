"""Learned prompts per persona (`prompt_persona`) and per cluster (`prompt_cluster`): the
study's prefix tuning as prompt tuning. A soft prompt of `length` vectors per group sits
in front of the frozen unified model (a unified_lora run); the prompts are the only
trainable weights (groups x length x hidden). All groups train in one job on mixed
batches and generate in mixed-group batches, each row gathering its own prompt.

The study trained its prefixes with lr 1e-3 for 10 epochs (train.lr, train.max_epochs);
prompt tuning is known to want larger rates than LoRA, so the sweep searches up to 3e-2.
"""

from dataclasses import dataclass, field

from peft import PeftModel

from research.config import ClusteringConfig
from research.modules.base import Needs, group_indices
from research.modules.soft_prompts import PromptTable, SoftPromptModule, sample_vocab_init


@dataclass
class PromptPersonaConfig:
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})
    length: int = field(default=10, metadata={"min": 1})  # soft tokens per prompt


@dataclass
class PromptClusterConfig(PromptPersonaConfig):
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)


class PromptPersonaModule(SoftPromptModule):
    config_class = PromptPersonaConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="persona")

    def __init__(self, model, tokenizer, train, args: PromptPersonaConfig, provided) -> None:
        unified = PeftModel.from_pretrained(model, provided.source("unified_run").artifacts / "adapter")
        unified.requires_grad_(False)
        super().__init__(unified, tokenizer, train, args)
        self.group_names, self.group_of = group_indices(provided.groups, provided.trained_personas)
        self.persona_groups = provided.groups
        # every group starts from the same prompt: what sets them apart is learned
        self.table = PromptTable(len(self.group_names), sample_vocab_init(model, args.length))
        self.context = provided.context

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the unified model is frozen: no LoRA dropout while the prompts learn
        return self

    def prompts(self, batch):
        return self.table(batch["group_idx"])

    def save_adapter(self, directory) -> None:
        self.export(directory, dict(zip(self.group_names, self.table.prompts, strict=True)), self.persona_groups)


class PromptClusterModule(PromptPersonaModule):
    config_class = PromptClusterConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="cluster", clustering=args.clustering)
