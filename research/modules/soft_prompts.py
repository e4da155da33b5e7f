"""The soft-prompt engine: learned vectors in front of each row's token embeddings (prompt
tuning, Lester et al. 2021, placed as PEFT places it), a different prompt per row of one
batch, on a frozen or jointly trained LoRA.

A row's prompt goes before everything, its padding included. Generation batches are
left-padded, so a row reads [prompt, padding, tokens]; transformers takes positions from
the attention mask when it generates, which makes that the same as the prompt's vectors
written in front of the tokens (a test checks it against a hard text prefix). Rows with
no prompt, or a shorter one, get masked zeros in front (`left_padded`), which serving
uses to answer prompt and LoRA adapters in one batch.

An adapter of kind "prompt+lora" is a directory holding
  lora/            the LoRA under the prompts (PEFT LoRA format)
  <group>/         each group's prompt in PEFT's prompt-tuning format (adapter_config.json,
                   adapter_model.safetensors with `prompt_embeddings`)
  groups.json      persona -> group directory
  manifest.json    kind, the LoRA directory, the prompts' context, and `default`: the
                   prompt for personas it never saw (promoted for `all`, it is the fallback)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PromptTuningConfig
from safetensors.torch import load_file, save_file
from torch import nn

from research.modules.base import AdaptationModule, greedy_generate, write_manifest

PROMPT_KEY = "prompt_embeddings"  # PEFT's name for a prompt-tuning adapter's weights
LORA_DIR = "lora"


def sample_vocab_init(model: nn.Module, length: int) -> torch.Tensor:
    """PEFT's SAMPLE_VOCAB init: the embeddings of `length` random vocabulary tokens
    (torch's global generator, seeded by the recipe), so a prompt starts as text-like input."""
    weight = model.get_input_embeddings().weight
    return weight[torch.randint(weight.shape[0], (length,))].detach().float().clone()


def per_row(index: torch.Tensor, item) -> torch.Tensor:
    """[rows, ...]: `item(i)` for each row's index i, each distinct i computed once (only
    what the batch holds enters the graph)."""
    unique, inverse = torch.unique(index, return_inverse=True)
    return torch.stack([item(i) for i in unique.tolist()])[inverse]


class PromptTable(nn.Module):
    """One [length, hidden] prompt per group. Each is a Parameter of its own: a group absent
    from a batch gets no gradient, so AdamW leaves it alone (as the LoRA group engine does)."""

    def __init__(self, groups: int, init: torch.Tensor) -> None:
        super().__init__()
        self.prompts = nn.ParameterList(nn.Parameter(init.clone()) for _ in range(groups))

    def forward(self, group_idx: torch.Tensor) -> torch.Tensor:
        """[rows, length, hidden]: each row's group's prompt."""
        return per_row(group_idx, lambda g: self.prompts[g])


def prepend(model: nn.Module, batch: dict, prompts: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> dict:
    """The model's inputs with `prompts` [rows, length, hidden] in front of the tokens:
    inputs_embeds and attention_mask (`prompt_mask`, default all ones), and labels (-100
    under the prompt) when the batch has them."""
    embeds = model.get_input_embeddings()(batch["input_ids"])
    rows, length = prompts.shape[:2]
    mask = batch["attention_mask"]
    if prompt_mask is None:
        prompt_mask = torch.ones(rows, length, dtype=mask.dtype, device=mask.device)
    inputs = {
        "inputs_embeds": torch.cat([prompts.to(embeds.dtype), embeds], dim=1),
        "attention_mask": torch.cat([prompt_mask.to(mask.dtype), mask], dim=1),
    }
    if "labels" in batch:
        ignored = torch.full((rows, length), -100, dtype=batch["labels"].dtype, device=mask.device)
        inputs["labels"] = torch.cat([ignored, batch["labels"]], dim=1)
    return inputs


def left_padded(prompts: list[torch.Tensor | None], hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [rows, longest, hidden], mask): each row's prompt (None: none) after masked zeros."""
    longest = max((p.shape[0] for p in prompts if p is not None), default=0)
    rows, masks = [], []
    for prompt in prompts:
        prompt = prompt if prompt is not None else torch.zeros(0, hidden)
        pad = longest - prompt.shape[0]
        rows.append(torch.cat([torch.zeros(pad, hidden), prompt.float()]))
        masks.append(torch.tensor([0] * pad + [1] * prompt.shape[0]))
    return torch.stack(rows), torch.stack(masks)


def export_prompt(prompt: torch.Tensor, directory: Path, base_model: str, model_config) -> None:
    """`prompt` [length, hidden] as a PEFT prompt-tuning directory (PEFT loads it as is)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({PROMPT_KEY: prompt.detach().float().contiguous()}, directory / "adapter_model.safetensors")
    PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=prompt.shape[0],
        token_dim=prompt.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=model_config.num_attention_heads,
        num_layers=model_config.num_hidden_layers,
        base_model_name_or_path=base_model,
    ).save_pretrained(directory)


def read_prompt(directory: str | Path) -> torch.Tensor:
    """A PEFT prompt-tuning directory's prompt, [length, hidden]."""
    return load_file(Path(directory) / "adapter_model.safetensors")[PROMPT_KEY]


class SoftPromptModule(AdaptationModule):
    """Base of every method that puts learned vectors in front of each row: a subclass
    gives each batch row its prompt (`prompts`) and what to export (`export`)."""

    adapter_kind = "prompt+lora"
    per_group_weights = True

    def prompts(self, batch: dict) -> torch.Tensor:
        """[rows, length, hidden]: the prompt in front of each row."""
        raise NotImplementedError

    def model_step(self, batch: dict) -> torch.Tensor:
        return self.model(**prepend(self.model, batch, self.prompts(batch))).loss

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        return greedy_generate(
            self.model, self.tokenizer, prepend(self.model, batch, self.prompts(batch)), max_new_tokens
        )

    def export(
        self,
        directory: Path,
        prompts: dict[str, torch.Tensor],
        groups: dict[str, str],
        default: str | None = None,
        **manifest,
    ) -> None:
        """The LoRA (self.model, a PeftModel), each prompt (name -> [length, hidden]),
        persona -> prompt name, and the manifest (`default`: the prompt for unseen personas)."""
        directory = Path(directory)
        self.model.save_pretrained(directory / LORA_DIR)
        base = self.model.get_base_model()
        for name, prompt in prompts.items():
            export_prompt(prompt, directory / name, base.name_or_path, base.config)
        (directory / "groups.json").write_text(json.dumps(groups, indent=1, sort_keys=True))
        write_manifest(
            directory, self.adapter_kind, lora=LORA_DIR, default=default, context=self.context.spec(), **manifest
        )
