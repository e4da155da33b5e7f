"""Experiment configuration: dataclasses, YAML files and `key=value` overrides.

Precedence: dataclass defaults < YAML file < --method < key=value overrides.
Keys are dotted (`train.lr=1e-3`, `method_args.r=4`); an unknown key or a bad
value is an error naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message says what is."""


# What the instrument tells the model in every system turn (research/datamodules/prompts.py):
# nothing; the persona's raw preferences (the context arithmetic is left to the model); or the
# settings the dialogue's replies make, resolved for its context (reading alone: a perfect reader
# scores 1.0)
Oracle = Literal["none", "preferences", "resolved"]


@dataclass
class DataConfig:
    dir: str = "data/personas"  # a dataset directory (research data generate, or your own)
    val_fraction: float = 1 / 6  # per persona, time-ordered: 30 dialogues -> 20/5/5
    test_fraction: float = 1 / 6
    user_name: bool = True  # the account holder's name in the system turn, as a real assistant knows it
    oracle: Oracle = "none"  # the instrument: "preferences" or "resolved" in the system turn (see Oracle)
    max_length: int = 256  # tokens per dialogue
    cache_dir: str = "data/cache"  # tokenized data, reused across runs


@dataclass
class TrainConfig:
    max_epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # float32 by default: bf16 rounds differently on CPUs with AMX, with avx512_bf16 and without
    # either (the same fit gave other metrics on another machine), and a CPU without bf16 units
    # multiplies bf16 ~50x slower than float32. On a GPU, bf16-mixed is the fast choice.
    precision: Literal["bf16-mixed", "32-true", "16-mixed"] = "32-true"
    monitor: str = "val/loss"  # early stopping and best-weights metric (another val/ metric is generated per epoch)
    monitor_mode: Literal["auto", "min", "max"] = "auto"  # auto: min for a loss, max for any other metric
    patience: int = 1  # epochs without improvement before stopping
    limit_train_batches: float = 1.0  # fraction (<=1.0) of training batches per epoch
    # the attention kernel while fitting; generation keeps the one the model was loaded with.
    # auto: eager on CPU, where it is 1.2x faster per LoRA step than sdpa on the tiny base
    # (bench: train_eager_vs_sdpa) but slower in generation; as loaded on an accelerator
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # where a fit runs (research/models/devices.py); evaluation, the probe and serving use its first device.
    # accelerator auto: cuda when a GPU is visible, else cpu. devices: "1" (one), "N" (N of them),
    # "i,j" or "i," (those indices), "auto" (all). strategy auto: one device as it is, several with ddp
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    devices: str = "1"
    strategy: Literal["auto", "ddp"] = "auto"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|[1-9]\d*|(\d+,)+\d*", self.devices):
            raise ConfigError(f"train.devices: {self.devices!r} is not allowed (allowed: N, i,j, i, or auto)")


@dataclass
class EvalConfig:
    splits: tuple[str, ...] = ("val", "test")
    # prompts per generation batch; measured here on the test split: 128 takes 9.1-9.5 s, 64 11.5-13.9 s, 256 9.8 s
    batch_size: int = 128
    max_new_tokens: int = 64
    embedder: str = ""  # sentence-transformers name or path; empty: the bundled all-MiniLM-L6-v2


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "persona-lab"
    artifacts: str = "mlruns/artifacts"  # artifact root for experiments this project creates


@dataclass
class ClusteringConfig:
    algorithm: Literal["kmeans", "agglomerative", "dbscan"] = "kmeans"
    features: Literal["behaviour", "description"] = "behaviour"
    k: int = 0  # clusters (kmeans, agglomerative); 0: the k in [k_min, k_max] with the best silhouette
    k_min: int = 2
    k_max: int = 12
    eps: float = 0.3  # DBSCAN: neighbourhood radius in cosine distance
    min_samples: int = 3  # DBSCAN: core point size; noise points form a cluster of their own
    embedder: str = ""  # description features: sentence-transformers name or path; empty: bundled MiniLM
    seed: int = 0


@dataclass
class ExperimentConfig:
    method: str = "unified_lora"
    base_model: str = "models/base"  # a local HF directory or a hub name (e.g. Qwen/Qwen2.5-0.5B-Instruct)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    method_args: Any = None  # the method's own config dataclass, filled by load_config


class OverrideText(str):
    """A key=value override's value as typed: read as YAML for every field except a string
    field, which keeps the text (a run id "01234567" must not become the number 1234567)."""


def _is_text(kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (types.UnionType, typing.Union):
        return any(_is_text(a) for a in args if a is not type(None))
    return kind is str


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if isinstance(value, OverrideText) and origin in (tuple, list) and _is_text(args[0] if args else str):
        # "a,b" or "[a, b]": split as text, never read as YAML (a digit run id stays text)
        value = [v.strip() for v in value.strip().removeprefix("[").removesuffix("]").split(",") if v.strip()]
    elif isinstance(value, OverrideText):
        value = str(value) if _is_text(kind) else (yaml.safe_load(value) if value.strip() else "")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(kind))}")
        return build(kind, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed (allowed: {', '.join(map(str, args))})")
        return value
    if origin in (tuple, list):
        item = args[0] if args else str
        if isinstance(value, str):  # "a,b" on the command line
            value = [OverrideText(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {getattr(item, '__name__', item)}, got {value!r}")
        return origin(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-05" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls, values: dict, prefix: str = ""):
    """Instance of dataclass `cls` from `values`, every key and type checked."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(names)})")
    kwargs = {k: _coerce(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    tree[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=1` strings -> nested dict of OverrideText, read as YAML (1 -> int, true -> bool)
    when built into a field that is not a string."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), OverrideText(raw))
    return tree


def merge_trees(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}, for MLflow params."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
