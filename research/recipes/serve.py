"""Answering through the routing table: `research chat` and `research predict`.

Every adapter the table names (and its fallback) is loaded once into one group
engine, and requests of different personas are answered together in mixed-adapter
batches: each row gets its adapter's LoRA, and its soft prompt where the adapter has
one (kind "prompt+lora"). An adapter of kind "module" (a method's own layout) is rebuilt
by its method on a base of its own and answers its personas in batches of their own. A
persona the table does not route gets the fallback and a warning.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import torch

from research.config import ConfigError
from research.data.domain import DAYS_OF_WEEK, TIMES_OF_DAY
from research.data.schema import load_dataset
from research.datamodules.persona import chat_ids, prompt_batches
from research.datamodules.prompts import ProfileContext, context_from_spec, conversation
from research.evaluation.metrics import extract
from research.models.base import load_base
from research.modules import METHODS
from research.modules.base import greedy_generate, read_manifest
from research.modules.group_lora import engine_shape, inject, load_group, read_adapter
from research.modules.retrieval import ServedRetrieval, embed_queries
from research.modules.soft_prompts import left_padded, prepend, read_prompt
from research.tracking.registry import RoutingError, adapter_dir, load_table

REQUEST_FIELDS = ("persona_id", "time_of_day", "weather", "temperature_c", "day_of_week", "turns")


def current_context(now: datetime | None = None) -> dict:
    """Context for a live request: the time of day and weekday now; weather and temperature
    are unknown to the assistant here, so neutral values stand in."""
    now = now or datetime.now()
    hour = now.hour
    time_of_day = TIMES_OF_DAY[0 if 5 <= hour < 12 else 1 if 12 <= hour < 17 else 2 if 17 <= hour < 22 else 3]
    return {
        "time_of_day": time_of_day,
        "weather": "cloudy",
        "temperature_c": 20.0,
        "day_of_week": DAYS_OF_WEEK[now.weekday()],
    }


ADAPTER_KINDS = ("lora", "lora+context", "prompt+lora", "module")  # what serving can answer through (modules/base.py)


class RoutedModel:
    """`users`: what the assistant knows of each persona (persona_id -> name, description...),
    for the system turn; a request's own `name` stands in for a persona it does not know.
    `device`: where the model answers (research.models.devices.inference_device)."""

    def __init__(
        self,
        base_model: str,
        tracking_uri: str,
        routing_dir: str | Path,
        max_new_tokens: int = 64,
        users: dict[str, dict] | None = None,
        device: str | torch.device = "cpu",
    ):
        table = load_table(routing_dir)
        if table is None:
            raise RoutingError(
                f"{routing_dir}/table.json does not exist: promote a registered model first (research promote)"
            )
        self.tokenizer, self.model = load_base(base_model)
        self.max_new_tokens = max_new_tokens
        entries = [table["fallback"]] if table["fallback"] else []
        entries += list(table["routes"].values())
        keys = sorted({(e["model"], e["version"], e["adapter"]) for e in entries})
        manifests = [read_manifest(adapter_dir(tracking_uri, m, v)) for m, v, _ in keys]
        if unknown := [m["kind"] for m in manifests if m["kind"] not in ADAPTER_KINDS]:
            raise RoutingError(f"cannot serve adapter kind {unknown[0]!r} (serving knows {', '.join(ADAPTER_KINDS)})")
        # each adapter's prompts: its manifest's context provider, or the default one; a
        # retrieval adapter's history grows in the routing directory (`remember`)
        self.contexts = [
            ServedRetrieval(
                m["context"], adapter_dir(tracking_uri, model, version), memory_path(routing_dir, model, version)
            )
            if m.get("context", {}).get("provider") == "retrieval"
            else context_from_spec(m["context"])
            if "context" in m
            else ProfileContext()
            for (model, version, _), m in zip(keys, manifests, strict=True)
        ]
        self.contexts.append(ProfileContext())  # no adapter
        self.users = users or {}
        self.device = torch.device(device)
        # each entry's LoRA slot and soft prompt (None: none). A prompt adapter's personas
        # share the LoRA beside their prompts: one slot for it, not one per persona. An
        # entry of kind "module" has its own model instead (self.served)
        lora_dirs, self.slot, self.prompts, self.served = {}, [], [], {}
        for entry, ((model, version, adapter), manifest) in enumerate(zip(keys, manifests, strict=True)):
            directory = adapter_dir(tracking_uri, model, version)
            if manifest["kind"] == "module":
                tokenizer, base = load_base(base_model)
                method = METHODS[manifest["method"]]
                self.served[entry] = method.served(directory / adapter, base.to(self.device).eval(), tokenizer)
                self.slot.append(None)
                self.prompts.append(None)
                continue
            prompted = manifest["kind"] == "prompt+lora"
            lora = directory / (manifest["lora"] if prompted else adapter)
            self.slot.append(lora_dirs.setdefault(lora, len(lora_dirs)))
            self.prompts.append(read_prompt(directory / adapter) if prompted else None)
        self.slot.append(len(lora_dirs))  # no adapter: an empty slot
        self.prompts.append(None)
        adapters = [read_adapter(lora)[1] for lora in lora_dirs]
        if not adapters and not self.served:
            raise RoutingError(f"{routing_dir}/table.json routes nobody and has no fallback")
        self.router = None  # none without a LoRA adapter: the base alone answers who has no route
        if adapters:
            targets, rank = engine_shape(adapters)
            # the last slot: no adapter at all, for unknown personas when there is no fallback
            self.router, layers = inject(self.model, targets, len(adapters) + 1, rank, rank, 0.0)
            for slot, factors in enumerate(adapters):
                load_group(layers, slot, factors)
            load_group(layers, len(adapters), {})
        self.hidden = self.model.get_input_embeddings().weight.shape[1]
        self.model.to(self.device).eval()
        group = {key: g for g, key in enumerate(keys)}
        self.group_of = {p: group[(e["model"], e["version"], e["adapter"])] for p, e in table["routes"].items()}
        fallback = table["fallback"]
        self.fallback = group[(fallback["model"], fallback["version"], fallback["adapter"])] if fallback else len(keys)
        self.has_fallback = bool(fallback)
        self.revision = table["revision"]

    def remember(self, persona_id: str, user_text: str, reply: str) -> bool:
        """Append an interaction to the persona's history, where its adapter retrieves one
        (True), so the next answer can draw on it; other adapters keep no history (False)."""
        context = self.contexts[self.group_of.get(persona_id, self.fallback)]
        if not isinstance(context, ServedRetrieval):
            return False
        settings = tuple(" ".join(triple) for triple in sorted(extract(reply).triples))
        context.remember(persona_id, user_text, reply, settings)
        return True

    def system_turns(self, requests: list[dict]) -> list[str]:
        """Each request's system turn, written by its adapter's context provider; the queries
        of retrieval adapters are embedded together (embed_queries)."""
        groups = [self.group_of.get(r["persona_id"], self.fallback) for r in requests]
        users = [self.users.get(r["persona_id"], r) for r in requests]
        retrieving = [i for i, g in enumerate(groups) if isinstance(self.contexts[g], ServedRetrieval)]
        vectors = embed_queries([self.contexts[groups[i]] for i in retrieving], [requests[i] for i in retrieving])
        queries = dict(zip(retrieving, vectors, strict=True))
        return [
            self.contexts[g].retrieved_system(r, u, queries[i]) if i in queries else self.contexts[g].system(r, u, None)
            for i, (r, g, u) in enumerate(zip(requests, groups, users, strict=True))
        ]

    def answer(self, requests: list[dict], batch_size: int = 128) -> list[str]:
        """The assistant's reply to the last user turn of each request (REQUEST_FIELDS)."""
        unknown = sorted({r["persona_id"] for r in requests} - self.group_of.keys())
        if unknown:
            by = "the fallback" if self.has_fallback else "the base model alone (the table has no fallback)"
            print(f"warning: no route for {', '.join(unknown)}: answered by {by}", file=sys.stderr)
        groups = [self.group_of.get(r["persona_id"], self.fallback) for r in requests]
        prompts = [
            chat_ids(self.tokenizer, conversation(r, system), generation_prompt=True)
            for r, system in zip(requests, self.system_turns(requests), strict=True)
        ]
        replies = [""] * len(requests)
        # who answers: a "module" entry's own model, or the group engine; the engine's rows with a
        # soft prompt are batched apart, so the others do not carry its width
        owners: dict[tuple[str, int | bool], list[int]] = {}
        for i, g in enumerate(groups):
            owner = ("module", g) if g in self.served else ("engine", self.prompts[g] is not None)
            owners.setdefault(owner, []).append(i)
        for (kind, owner), rows in owners.items():
            for index, batch in prompt_batches([prompts[i] for i in rows], self.tokenizer.pad_token_id, batch_size):
                index = [rows[i] for i in index]
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if kind == "engine":
                    new_tokens = self._through_engine(batch, [groups[i] for i in index])
                else:
                    personas = [requests[i]["persona_id"] for i in index]
                    new_tokens = self.served[owner].generate(batch, personas, self.max_new_tokens)
                for i, text in zip(
                    index, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
                ):
                    replies[i] = text.strip()
        return replies

    def _through_engine(self, batch: dict, groups: list[int]) -> torch.Tensor:
        """New tokens for rows answered by the group engine, row i through entry groups[i]."""
        if self.router is not None:
            self.router.route(torch.tensor([self.slot[g] for g in groups], device=self.device))
        if any(self.prompts[g] is not None for g in groups):
            soft, soft_mask = left_padded([self.prompts[g] for g in groups], self.hidden)
            batch = prepend(self.model, batch, soft.to(self.device), soft_mask.to(self.device))
        return greedy_generate(self.model, self.tokenizer, batch, self.max_new_tokens)


def memory_path(routing_dir: str | Path, model: str, version: str) -> Path:
    """Where a retrieval adapter's served history grows (interactions appended since)."""
    return Path(routing_dir) / "memory" / f"{model}-v{version}.jsonl"


def known_users(data_dir: str | Path) -> dict[str, dict]:
    """persona_id -> the persona's row (name, description, ...) of the dataset at `data_dir`;
    empty when there is none there (serving then knows only what requests carry)."""
    if not Path(data_dir).exists():
        return {}
    personas, _ = load_dataset(data_dir)
    return {row["persona_id"]: row for row in personas.iter_rows(named=True)}


def check_output(path: str | Path) -> Path:
    """Where predictions may go: a .jsonl or .parquet file in a directory that exists (checked
    before the model loads)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"--output {path}: predictions are written as a .jsonl or .parquet file")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: {path.parent} is not a directory")
    if path.is_dir():
        raise ConfigError(f"--output {path}: is a directory")
    return path


def write_predictions(path: str | Path, requests: list[dict], replies: list[str]) -> None:
    path = Path(path)
    frame = pl.DataFrame(requests, infer_schema_length=None).with_columns(
        prediction=pl.Series(replies, dtype=pl.String)
    )
    partial = path.with_name(path.name + ".partial")
    frame.write_parquet(partial) if path.suffix == ".parquet" else frame.write_ndjson(partial)
    partial.replace(path)
