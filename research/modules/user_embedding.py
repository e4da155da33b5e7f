"""User embeddings: a learned vector per persona (`dim`), mapped by one linear layer to
`tokens` soft tokens in front of the prompt, trained jointly with a fresh unified LoRA.

The projection's weight starts at zero, so every persona starts with the same prompt
(its bias, sampled vocabulary embeddings); what the vectors carry is learned. Each
persona's vector is a Parameter of its own: a persona absent from a batch gets no
gradient, so AdamW leaves its vector alone (as the group engines do). A persona with no
training dialogues gets the mean of the trained personas' vectors, in evaluation and
when served (the export's `_unseen` prompt, the fallback when the adapter is promoted
for `all`).

Exported as kind "prompt+lora": each persona's prompt materialised in PEFT's
prompt-tuning format, plus `user_embedding.safetensors` (the vectors, in the manifest's
persona order, and the projection) for analysis: PEFT has no format for them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from safetensors.torch import save_file
from torch import nn

from research.modules.base import Needs
from research.modules.soft_prompts import SoftPromptModule, per_row, sample_vocab_init
from research.modules.unified_lora import UnifiedLoraConfig

UNSEEN = "_unseen"  # the export's prompt for unseen personas (a persona may not take this name)


@dataclass
class UserEmbeddingConfig(UnifiedLoraConfig):
    dim: int = field(default=64, metadata={"min": 1})  # size of each persona's vector
    tokens: int = field(default=4, metadata={"min": 1})  # soft tokens it is mapped to


class UserEmbeddingModule(SoftPromptModule):
    config_class = UserEmbeddingConfig

    @classmethod
    def needs(cls, args: UserEmbeddingConfig) -> Needs:
        return Needs(held_out=args.held_out)  # held-out personas get the mean vector

    def __init__(self, model, tokenizer, train, args: UserEmbeddingConfig, provided) -> None:
        hidden = model.get_input_embeddings().weight.shape[1]
        init = sample_vocab_init(model, args.tokens)
        super().__init__(get_peft_model(model, args.peft_config()), tokenizer, train, args)
        self.persona_ids = list(provided.persona_ids)  # the datamodule's persona_idx order
        self.register_buffer(
            "trained", torch.tensor([p in provided.trained_personas for p in self.persona_ids]), persistent=False
        )
        if not self.trained.any():
            raise ValueError("user_embedding: no persona has training dialogues")
        if UNSEEN in self.persona_ids:
            raise ValueError(f"user_embedding: persona id {UNSEEN!r} is the name of the unseen personas' prompt")
        self.vectors = nn.ParameterList(nn.Parameter(torch.randn(args.dim)) for _ in self.persona_ids)
        self.projection = nn.Linear(args.dim, args.tokens * hidden)
        with torch.no_grad():
            self.projection.weight.zero_()
            self.projection.bias.copy_(init.flatten())
        self.tokens, self.hidden = args.tokens, hidden
        self.context = provided.context

    def mean_vector(self) -> torch.Tensor:
        """What a persona never trained gets: the trained personas' mean."""
        return torch.stack([v for v, trained in zip(self.vectors, self.trained, strict=True) if trained]).mean(0)

    def user_vectors(self, persona_idx: torch.Tensor) -> torch.Tensor:
        """[rows, dim]: each row's persona's vector."""
        return per_row(persona_idx, lambda p: self.vectors[p] if self.trained[p] else self.mean_vector())

    def prompt_of(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.projection(vectors).view(-1, self.tokens, self.hidden)

    def prompts(self, batch):
        return self.prompt_of(self.user_vectors(batch["persona_idx"]))

    @torch.no_grad()
    def save_adapter(self, directory) -> None:
        vectors = self.user_vectors(torch.arange(len(self.persona_ids)))
        prompts = dict(zip(self.persona_ids, self.prompt_of(vectors), strict=True))
        prompts[UNSEEN] = self.prompt_of(self.mean_vector()[None])[0]
        self.export(
            directory,
            prompts,
            {p: p for p in self.persona_ids},
            default=UNSEEN,
            persona_ids=self.persona_ids,
            user_embedding="user_embedding.safetensors",
        )
        tensors = {
            "vectors": vectors,
            "projection.weight": self.projection.weight,
            "projection.bias": self.projection.bias,
        }
        save_file(
            {k: v.detach().float().contiguous() for k, v in tensors.items()},
            Path(directory) / "user_embedding.safetensors",
        )
