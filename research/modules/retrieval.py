"""Retrieval: the persona's own past interactions in the system turn of the unified model.

Every exchange (user turn -> assistant reply) of a persona's history is indexed with the
embedder. For each prompt the `k` best are written into the system turn, oldest first:
most similar to the user turn being answered (`semantic`), the latest (`recency`), or
half of each (`hybrid`); verbatim ("Earlier: lights on => Lights at 40%. | ...") or as
the settings they made ("Earlier settings: lights brightness 40, ...").

What a prompt may retrieve, so nothing leaks:
- val prompts: the persona's earlier training dialogues;
- test prompts: earlier training dialogues, or training and val with `history=train+val`;
- training prompts (used when `train_with_context=true` fine-tunes the unified LoRA with
  retrieved context, so the model learns to use it): the persona's *other* training
  dialogues, leave-one-out, later ones included (all are training data);
- never the dialogue being answered, never a test dialogue, and for val and test prompts
  never a later dialogue.
`k=0` gives the default prompts exactly, so it reproduces unified.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from peft import PeftModel

from research.config import FRACTION, ConfigError, DataConfig
from research.data.schema import DataError, assign_splits, fingerprint, load_dataset, read_rows
from research.datamodules.persona import default_context
from research.datamodules.prompts import ProfileContext, fingerprint_of, history_line
from research.models.embedder import load_embedder
from research.modules.base import AdaptationModule, Needs, write_manifest


@dataclass
class RetrievalConfig:
    # a unified_lora run id; empty: the latest finished one on the same dataset and base model
    unified_run: str = field(default="", metadata={"source_method": "unified_lora"})
    k: int = field(default=3, metadata={"min": 0})  # exchanges retrieved per prompt; 0: unified's prompts
    strategy: Literal["semantic", "recency", "hybrid"] = "semantic"
    format: Literal["verbatim", "settings"] = "verbatim"
    history: Literal["train", "train+val"] = "train"  # what test prompts may retrieve from
    train_with_context: bool = False  # fine-tune the unified LoRA on prompts with retrieved context
    # sentence-transformers name or path; empty: the bundled all-MiniLM-L6-v2
    embedder: str = field(default="", metadata={"embedder": True})
    # share of personas held out of training (cold-start evaluation, Needs.held_out): their
    # history is retrieved like anyone's, and unified_run must hold out the same personas
    held_out: float = field(default=0.0, metadata=FRACTION)


# settings that change what is trained on, not what a prompt says
TRAINING_SETTINGS = ("unified_run", "train_with_context", "held_out")


@dataclass(frozen=True)
class Exchange:
    dialogue_id: str
    split: str
    order: int  # position in the persona's time order (dialogue, then turn)
    user: str
    reply: str
    settings: tuple[str, ...]  # "lights brightness 40", from the turn's recorded actions
    row: int  # into the index's embedding matrix


class HistoryIndex:
    """Every user turn of a dataset embedded once (cached beside the token cache), and each
    persona's exchanges in time order."""

    def __init__(self, data: DataConfig, embedder: str) -> None:
        personas, dialogues = load_dataset(data.dir)
        dialogues = assign_splits(dialogues, data.val_fraction, data.test_fraction).sort(
            "persona_id", "timestamp", "dialogue_id"
        )
        self.exchanges: dict[str, list[Exchange]] = {}
        self.queries: dict[tuple[str, int], int] = {}  # (dialogue, user turn k) -> embedding row
        texts: list[str] = []
        for row in dialogues.iter_rows(named=True):
            history = self.exchanges.setdefault(row["persona_id"], [])
            turns = row["turns"]
            for k in range(0, len(turns) - 1, 2):
                self.queries[row["dialogue_id"], k // 2] = len(texts)
                reply = turns[k + 1]
                settings = tuple(f"{a['device']} {a['parameter']} {a['value']}" for a in reply["actions"])
                history.append(
                    Exchange(
                        row["dialogue_id"],
                        row["split"],
                        len(history),
                        turns[k]["text"],
                        reply["text"],
                        settings,
                        len(texts),
                    )
                )
                texts.append(turns[k]["text"])
        key = hashlib.sha256(f"{fingerprint(data.dir)}|{embedder}|{len(texts)}".encode()).hexdigest()[:20]
        path = Path(data.cache_dir) / f"history-{key}.npy"
        if path.exists():
            self.vectors = np.load(path)
        else:
            self.vectors = load_embedder(embedder).encode(
                texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            # a name of its own: two workers embedding on a fresh cache must not write one file
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial.npy", delete=False) as partial:
                np.save(partial, self.vectors)
            os.replace(partial.name, path)

    def candidates(self, persona: str, split: str, history: str, dialogue_id: str | None = None) -> list[Exchange]:
        """What a prompt of `split` may retrieve (the module docstring's rules): a prompt of
        `dialogue_id`, or (None) a request after every dialogue, as served."""
        exchanges = self.exchanges.get(persona, [])
        if split == "train":
            return [e for e in exchanges if e.split == "train" and e.dialogue_id != dialogue_id]
        allowed = {"train", "val"} if split == "test" and history == "train+val" else {"train"}
        first = next((e.order for e in exchanges if e.dialogue_id == dialogue_id), len(exchanges))
        return [e for e in exchanges if e.split in allowed and e.order < first]


def select(candidates: list[Exchange], vectors: np.ndarray, query: np.ndarray, k: int, strategy: str) -> list[Exchange]:
    """The k exchanges to show, oldest first: most similar to the query (rows of the
    normalised `vectors`), the latest, or half of each."""
    k = min(k, len(candidates))
    latest = sorted(candidates, key=lambda e: -e.order)
    if strategy == "recency":
        picked = latest[:k]
    else:
        similarity = vectors[[e.row for e in candidates]] @ query
        # most similar first; the later exchange first among equals
        order = sorted(range(len(candidates)), key=lambda i: (-similarity[i], -candidates[i].order))
        picked = [candidates[i] for i in order][: k if strategy == "semantic" else math.ceil(k / 2)]
        picked += [e for e in latest if e not in picked][: k - len(picked)]
    return sorted(picked, key=lambda e: e.order)


def render(system: str, exchanges: list[Exchange], form: str) -> str:
    """`system` with the exchanges: verbatim, or the settings they made (each once)."""
    if not exchanges:
        return system
    if form == "verbatim":
        return f"{system} {history_line([(e.user, e.reply) for e in exchanges])}"
    settings = list(dict.fromkeys(s for e in exchanges for s in e.settings))
    return f"{system} Earlier settings: {', '.join(settings)}." if settings else system


class RetrievalContext:
    """The default provider's system turn plus the retrieved exchanges."""

    def __init__(self, base: ProfileContext, data: DataConfig, args: RetrievalConfig) -> None:
        self.base, self.data, self.args = base, data, args
        self._index: HistoryIndex | None = None  # built on first use: constructors stay cheap

    @property
    def index(self) -> HistoryIndex:
        if self._index is None:
            self._index = HistoryIndex(self.data, self.args.embedder)
        return self._index

    def retrieve(self, dialogue: dict, turn: int | None) -> list[Exchange]:
        """The k exchanges for the prompt of `dialogue`'s assistant turn `turn` (None: the
        whole dialogue as trained on, queried by its first user turn), oldest first."""
        candidates = self.index.candidates(
            dialogue["persona_id"], dialogue["split"], self.args.history, dialogue["dialogue_id"]
        )
        query = self.index.vectors[self.index.queries[dialogue["dialogue_id"], turn or 0]]
        return select(candidates, self.index.vectors, query, self.args.k, self.args.strategy)

    def system(self, dialogue: dict, user: dict, turn: int | None = None) -> str:
        system = self.base.system(dialogue, user, turn)
        return render(system, self.retrieve(dialogue, turn) if self.args.k else [], self.args.format)

    def fingerprint(self) -> str:
        if not self.args.k:  # the default prompts, token for token: share their cache
            return self.base.fingerprint()
        settings = {k: v for k, v in asdict(self.args).items() if k not in TRAINING_SETTINGS}
        return fingerprint_of(type(self).__name__, self.base.fingerprint(), settings)

    def spec(self) -> dict:
        settings = {k: v for k, v in asdict(self.args).items() if k not in TRAINING_SETTINGS}
        return {**self.base.spec(), "provider": "retrieval", "retrieval": settings}


class RetrievalModule(AdaptationModule):
    config_class = RetrievalConfig
    adapter_kind = "lora+context"

    @classmethod
    def needs(cls, args: RetrievalConfig) -> Needs:
        return Needs(context=lambda data: RetrievalContext(default_context(data), data, args), held_out=args.held_out)

    def __init__(self, model, tokenizer, train, args: RetrievalConfig, provided) -> None:
        adapter = provided.source("unified_run").artifacts / "adapter"
        unified = PeftModel.from_pretrained(model, adapter, is_trainable=args.train_with_context)
        super().__init__(unified, tokenizer, train, args)
        self.trainable = args.train_with_context  # else unified's weights, evaluated as they are
        self.context = provided.context

    def save_adapter(self, directory) -> None:
        self.model.save_pretrained(directory)
        write_manifest(directory, self.adapter_kind, context=self.context.spec())
        # what a served request may retrieve: what a test prompt after every dialogue may
        index = self.context.index
        with open(Path(directory) / HISTORY_FILE, "w") as file:
            for persona in sorted(index.exchanges):
                for e in index.candidates(persona, "test", self.args.history):
                    row = {"persona_id": persona, "user": e.user, "reply": e.reply, "settings": e.settings}
                    file.write(json.dumps(row) + "\n")


HISTORY_FILE = "history.jsonl"


class ServedRetrieval:
    """A retrieval adapter's prompts when serving: each persona's history saved with the
    adapter (history.jsonl), plus what was appended since (`memory`, a JSONL file the
    routing directory keeps, so the adapter's registered artifacts stay as they were).
    A request's query is its last user turn; all of the history is its past."""

    def __init__(self, spec: dict, adapter: Path, memory: Path) -> None:
        settings = spec["retrieval"]
        self.base = ProfileContext(**{k: v for k, v in spec.items() if k not in ("provider", "retrieval")})
        self.k, self.strategy, self.format = settings["k"], settings["strategy"], settings["format"]
        self.embedder, self.memory = load_embedder(settings["embedder"]), memory
        self.exchanges: dict[str, list[Exchange]] = {}
        self.vectors = np.zeros((0, self.embedder.get_embedding_dimension()), dtype=np.float32)
        if not (adapter / HISTORY_FILE).exists():
            raise ConfigError(
                f"{adapter} has no {HISTORY_FILE}: a retrieval adapter saved before serving kept its history; "
                "retrain the retrieval run and register it again"
            )
        rows, problems = read_rows(adapter / HISTORY_FILE)
        if memory.exists():  # appended by `research chat --remember`: a damaged line names its file and row
            remembered, damaged = read_rows(memory)
            rows, problems = rows + remembered, problems + damaged
        if problems:
            raise DataError("\n".join(problems))
        self._add([row for _, row in rows])

    def _add(self, rows: list[dict]) -> None:
        if not rows:
            return
        first = len(self.vectors)
        texts = [row["user"] for row in rows]
        vectors = self.embedder.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        self.vectors = np.concatenate([self.vectors, vectors])
        for i, row in enumerate(rows):
            history = self.exchanges.setdefault(row["persona_id"], [])
            history.append(
                Exchange("", "past", len(history), row["user"], row["reply"], tuple(row["settings"]), first + i)
            )

    def remember(self, persona: str, user: str, reply: str, settings: tuple[str, ...] = ()) -> None:
        """Append an interaction to the persona's history: the next answer can retrieve it."""
        row = {"persona_id": persona, "user": user, "reply": reply, "settings": list(settings)}
        self.memory.parent.mkdir(parents=True, exist_ok=True)
        with open(self.memory, "a") as file:
            file.write(json.dumps(row) + "\n")
        self._add([row])

    def retrieved_system(self, request: dict, user: dict, query: np.ndarray) -> str:
        """The request's system turn with what its `query` (embed_queries) retrieves."""
        system = self.base.system(request, user, None)
        candidates = self.exchanges.get(request["persona_id"], [])
        if not (self.k and candidates):
            return system
        return render(system, select(candidates, self.vectors, query, self.k, self.strategy), self.format)


def embed_queries(contexts: list[ServedRetrieval], requests: list[dict]) -> list[np.ndarray]:
    """Each request's query, its last user turn, embedded by its adapter's embedder: all the
    queries of one embedder in one call (a `predict` file's at once), not one call a request."""
    vectors: list[np.ndarray] = [np.empty(0)] * len(requests)
    by_embedder: dict = {}
    for i, context in enumerate(contexts):
        by_embedder.setdefault(context.embedder, []).append(i)
    for embedder, index in by_embedder.items():
        texts = [requests[i]["turns"][-1]["text"] for i in index]
        encoded = embedder.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        for i, vector in zip(index, encoded, strict=True):
            vectors[i] = vector
    return vectors
