"""PersonaDataModule: the one data pipeline every method shares.

Dialogues are rendered with the tokenizer's chat template (context in the system
turn), trained with the loss on assistant tokens only, and evaluated turn by turn
(the dialogue history up to an assistant turn is the prompt). Every batch carries
the persona index and dialogue ids (training and val batches); methods that own an
adapter per group pass `group_of` and get `group_idx` too. Personas in `held_out` (a
persona-level split) are left out of the training and val-loss batches, never out of
evaluation. A method may add reworded
copies of the training dialogues (`augment`, marked `augmented`). Tokenized data is
cached under `cache_dir`, keyed by the dataset, the tokenizer and the settings that
change tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import cache
from pathlib import Path

import lightning.pytorch as L
import polars as pl
import torch
from torch.utils.data import DataLoader

from research.config import DataConfig
from research.data.augment import Augmentation
from research.data.schema import assign_splits, fingerprint, load_dataset
from research.datamodules.prompts import ContextProvider, ProfileContext, conversation

CACHE_VERSION = 1  # bump when the encoding below changes


def chat_ids(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    # transformers 5 returns a BatchEncoding unless asked for plain ids
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )
    )


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels with -100 outside assistant replies, where each assistant prompt ends)."""
    ids = chat_ids(tokenizer, messages)
    labels = [-100] * len(ids)
    prompt_ends = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = chat_ids(tokenizer, messages[:k], generation_prompt=True)
        if ids[: len(prompt)] != prompt:
            raise ValueError(
                f"{tokenizer.name_or_path}: chat template is not prefix-stable; cannot find assistant turns"
            )
        end = len(chat_ids(tokenizer, messages[: k + 1]))
        reply = ids[len(prompt) : end]
        # learn the reply and its end-of-turn token, not the template's newline after it
        stop = len(prompt) + (
            reply.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in reply else len(reply)
        )
        labels[len(prompt) : stop] = ids[len(prompt) : stop]
        prompt_ends.append(len(prompt))
    return ids, labels, prompt_ends


@cache
def _read_cache(path: Path) -> dict:
    """Tokenized data, read once per process (the path names its content); treat as read-only."""
    return torch.load(path, weights_only=False)


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(str(tokenizer.chat_template).encode())
    return digest.hexdigest()[:16]


def default_context(cfg: DataConfig) -> ProfileContext:
    """The prompts `cfg` asks for: the user's name unless data.user_name=false, and the
    instrument's oracle with data.oracle=preferences or resolved."""
    return ProfileContext(user_name=cfg.user_name, oracle=cfg.oracle)


def held_out_personas(persona_ids: list[str], share: float) -> set[str]:
    """`share` of the personas (at least one when share > 0, never all), chosen by a hash of
    their ids: the same personas for every run, method and seed with that share."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"held_out: a share of personas in [0, 1), got {share}")
    count = min(max(round(share * len(persona_ids)), 1 if share > 0 else 0), len(persona_ids) - 1)
    return set(sorted(persona_ids, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:count])


class PersonaDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        batch_size: int = 8,
        seed: int = 0,
        group_of: dict[str, int] | None = None,
        context: ContextProvider | None = None,
        augment: Augmentation | None = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.batch_size, self.seed = cfg, tokenizer, batch_size, seed
        self.group_of = group_of
        self.held_out: set[str] = set()  # personas whose dialogues never reach training (the recipe sets it)
        self.context = context or default_context(cfg)
        self.augment = augment
        self.data_fingerprint = fingerprint(cfg.dir)
        key = json.dumps(
            [
                CACHE_VERSION,
                self.data_fingerprint,
                tokenizer_fingerprint(tokenizer),
                cfg.val_fraction,
                cfg.test_fraction,
                self.context.fingerprint(),
                cfg.max_length,
                *([augment.fingerprint()] if augment else []),  # without one, the keys caches already have
            ],
        )
        self.cache_path = Path(cfg.cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"

    def prepare_data(self) -> None:
        if self.cache_path.exists():
            return
        personas, dialogues = load_dataset(self.cfg.dir)
        dialogues = assign_splits(dialogues, self.cfg.val_fraction, self.cfg.test_fraction)
        users = {user["persona_id"]: user for user in personas.iter_rows(named=True)}
        examples: dict[str, list] = {"train": [], "val": [], "test": []}
        rows = list(dialogues.iter_rows(named=True))
        if self.augment:  # reworded copies of each persona's training dialogues, training only
            by_persona: dict[str, list[dict]] = {}
            for row in rows:
                if row["split"] == "train":
                    by_persona.setdefault(row["persona_id"], []).append(row)
            rows += [extra for persona in sorted(by_persona) for extra in self.augment(by_persona[persona])]
        for row in rows:
            user = users[row["persona_id"]]
            system = self.context.system(row, user, None)
            ids, labels, prompt_ends = encode_conversation(self.tokenizer, conversation(row, system))
            replies = [t["text"] for t in row["turns"] if t["role"] == "assistant"]
            prompts = [ids[:end] for end in prompt_ends]
            for k in range(len(prompts)):  # a provider may tell a later turn something else
                if (turn_system := self.context.system(row, user, k)) != system:
                    turn_ids, _, turn_ends = encode_conversation(self.tokenizer, conversation(row, turn_system))
                    prompts[k] = turn_ids[: turn_ends[k]]
            examples[row["split"]].append(
                {
                    "persona_id": row["persona_id"],
                    "dialogue_id": row["dialogue_id"],
                    **({"augmented": True} if row.get("augmented") else {}),
                    "input_ids": ids[: self.cfg.max_length],
                    "labels": labels[: self.cfg.max_length],
                    # left-truncated prompts: the latest history matters most
                    "turns": [
                        (prompt[-self.cfg.max_length :], ref) for prompt, ref in zip(prompts, replies, strict=True)
                    ],
                }
            )
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: two workers tokenizing on a fresh cache must not write one file
        with tempfile.NamedTemporaryFile(dir=self.cache_path.parent, suffix=".partial", delete=False) as partial:
            torch.save({"examples": examples, "persona_ids": personas["persona_id"].to_list()}, partial)
        os.replace(partial.name, self.cache_path)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "examples"):
            return
        cached = _read_cache(self.cache_path)
        self.examples = {split: list(rows) for split, rows in cached["examples"].items()}
        self.persona_ids: list[str] = cached["persona_ids"]
        self.persona_index = {p: i for i, p in enumerate(self.persona_ids)}

    # --- training batches ---------------------------------------------------

    def _collate(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows]),
            "attention_mask": torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
            ),
            "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]),
            "persona_idx": torch.tensor([self.persona_index[r["persona_id"]] for r in rows]),
            "dialogue_id": [r["dialogue_id"] for r in rows],
        }
        if self.group_of is not None:
            batch["group_idx"] = torch.tensor([self.group_of[r["persona_id"]] for r in rows])
        return batch

    def _trained_on(self, split: str) -> list[dict]:
        return [row for row in self.examples[split] if row["persona_id"] not in self.held_out]

    def device_batch_size(self) -> int:
        """`batch_size` is a step's batch over all devices: under DDP each process loads its share
        (Lightning gives each its part of the data), so a fit on N devices takes the same steps."""
        return self.batch_size // (self.trainer.world_size if self.trainer else 1)

    def train_dataloader(self) -> DataLoader:
        rows = self._trained_on("train")
        generator = torch.Generator().manual_seed(self.seed)
        sampler = LengthGroupedSampler([len(r["input_ids"]) for r in rows], self.device_batch_size(), generator)
        return DataLoader(rows, self.device_batch_size(), sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._trained_on("val"), self.device_batch_size() * 2, collate_fn=self._collate)

    # --- evaluation turns -----------------------------------------------------

    def eval_turns(self, split: str) -> pl.DataFrame:
        """One row per assistant turn of `split`: persona, dialogue, turn, prompt and reference."""
        rows = [
            {
                "persona_id": ex["persona_id"],
                "dialogue_id": ex["dialogue_id"],
                "turn": t,
                "prompt_ids": prompt,
                "reference": ref,
            }
            for ex in self.examples[split]
            for t, (prompt, ref) in enumerate(ex["turns"])
        ]
        return pl.DataFrame(rows, schema_overrides={"prompt_ids": pl.List(pl.Int64)})

    def eval_batches(self, turns: pl.DataFrame, batch_size: int):
        """Left-padded prompt batches, shortest first (less padding); yields (row indices, batch)."""
        prompts = [p.to_list() for p in turns["prompt_ids"]]
        personas = turns["persona_id"].to_list()
        for index, batch in prompt_batches(prompts, self.tokenizer.pad_token_id, batch_size):
            batch["persona_idx"] = torch.tensor([self.persona_index[personas[i]] for i in index])
            if self.group_of is not None:
                batch["group_idx"] = torch.tensor([self.group_of[personas[i]] for i in index])
            yield index, batch


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """A random order in which each run of `batch_size` rows has similar lengths, as the
    Hugging Face Trainer's group_by_length: a permutation cut into megabatches of MEGABATCH
    batches, each sorted by length, all batches then shuffled (a short last one stays last,
    so the loader's batches keep their boundaries). Random batches of the default dataset pad
    23-35% more tokens than they hold, and a CPU fit computes on every one of them; which
    personas and dialogues share a batch stays random. A new order each epoch, from `generator`."""

    MEGABATCH = 50

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.MEGABATCH
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[index]
        for batch in short:
            yield from batch


def prompt_batches(prompts: list[list[int]], pad: int, batch_size: int):
    """Left-padded batches of prompts for generation, shortest first (less padding);
    yields (indices into `prompts`, {input_ids, attention_mask})."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in index)
        yield (
            index,
            {
                "input_ids": torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in index]),
                "attention_mask": torch.tensor(
                    [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in index]
                ),
            },
        )
