"""No adaptation: the base model as it is, the floor every method must clear."""

from dataclasses import dataclass

from research.modules.base import AdaptationModule


@dataclass
class NoAdaptationConfig:
    pass


class NoAdaptationModule(AdaptationModule):
    config_class = NoAdaptationConfig
    trainable = False

    def __init__(self, model, tokenizer, train, args: NoAdaptationConfig, provided=None) -> None:
        super().__init__(model, tokenizer, train, args)
        self.model.requires_grad_(False)
