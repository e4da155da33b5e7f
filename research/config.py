"""Experiment configuration: dataclasses, YAML files and `key=value` overrides.

Precedence: dataclass defaults < YAML file < --method < key=value overrides.
Keys are dotted (`train.lr=1e-3`, `method_args.r=4`); an unknown key or a bad
value is an error naming the key and what is allowed.

What a value may be is declared once, on its dataclass field: the type (bool, int,
float, str, Literal choices, tuples of them, nested config dataclasses) and, in the
field's metadata, limits that `build` enforces alike for every config class (the
methods' own, the simulator's and the base model's included):

    min, max   inclusive bounds of a number (of each number, for a tuple)
    gt, lt     exclusive bounds
    choices    the allowed values (of each item), where a Literal cannot list them
    nonempty   a string (blank counts as empty) or tuple that must have content
    length     the exact number of items of a tuple
    directory  a path that, where it exists, must be a directory
    check      (predicate(value, config), the rule in words): a rule across fields, checked
               once every field passed its own limits
    metric     "val" (val/loss or val/<metric>) or "per_persona" (<metric>): a metric name,
               checked by load_config against the evaluation layer's metrics
    embedder   a sentence-transformers name or path (empty: the bundled one), checked before
               a run by research.models.embedder.check_embedders
    base_layers  names of the base model's Linear layers, checked against the loaded base
               before a run by research.recipes.train.check_layer_names

Every float must be finite. So a value a library would refuse later (epochs, batch
size, lr, ranks, fractions) is refused here, naming the key, before any run, study,
cache entry or file exists.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class UserInputError(ValueError):
    """Input a user supplied that cannot be used: a config key or value, a data file, a
    command-line argument, a run id, the state of the registry or the routing table. The
    message names the file, row and field, or the key. `research` prints it as one
    paragraph and exits 2; any other exception is a bug and keeps its traceback."""


class ConfigError(UserInputError):
    """A config key or value (or an argument, a run id, a store's state) that is not
    allowed; the message says what is."""


def read_text(path: str | Path, error: type[UserInputError] = ConfigError) -> str:
    """The UTF-8 text of the file at `path`; a file that is missing or not UTF-8 is an
    `error` naming the file and the line of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(f"{path} line {line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML document at `path`; one that does not parse is a ConfigError naming the
    file and the line."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None


SEED = {"min": 0, "max": 2**32 - 1}  # numpy's seeds are unsigned 32-bit
FRACTION = {"min": 0, "lt": 1}
PROBABILITY = {"min": 0, "max": 1}
# the split fractions together must leave each persona dialogues to train on
VAL_FRACTION = {**FRACTION, "check": (lambda v, cfg: v + cfg.test_fraction < 1, "val_fraction + test_fraction below 1")}
TRACKING_SCHEMES = ("http", "https", "postgresql", "mysql", "mssql", "file")


def is_tracking_uri(uri: str, _config=None) -> bool:
    """An MLflow store URL: sqlite:///PATH, a database or tracking server URL, file:PATH."""
    if uri.startswith("sqlite:"):
        return uri.startswith("sqlite:///") and len(uri) > len("sqlite:///")
    scheme, separator, rest = uri.partition(":")
    return bool(separator and rest.strip("/")) and scheme.split("+", 1)[0] in TRACKING_SCHEMES


# What the instrument tells the model in every system turn (research/datamodules/prompts.py):
# nothing; the persona's raw preferences (the context arithmetic is left to the model); or the
# settings the dialogue's replies make, resolved for its context (reading alone: a perfect reader
# scores 1.0)
Oracle = Literal["none", "preferences", "resolved"]


@dataclass
class DataConfig:
    # a dataset directory (research data generate, or your own)
    dir: str = field(default="data/personas", metadata={"nonempty": True})
    # per persona, time-ordered: 30 dialogues -> 20/5/5
    val_fraction: float = field(default=1 / 6, metadata=VAL_FRACTION)
    test_fraction: float = field(default=1 / 6, metadata=FRACTION)
    user_name: bool = True  # the account holder's name in the system turn, as a real assistant knows it
    oracle: Oracle = "none"  # the instrument: "preferences" or "resolved" in the system turn (see Oracle)
    max_length: int = field(default=256, metadata={"min": 16})  # tokens per dialogue
    # tokenized data, reused across runs
    cache_dir: str = field(default="data/cache", metadata={"nonempty": True, "directory": True})


@dataclass
class TrainConfig:
    max_epochs: int = field(default=3, metadata={"min": 1})
    lr: float = field(default=5e-4, metadata={"gt": 0})
    batch_size: int = field(default=8, metadata={"min": 1})
    weight_decay: float = field(default=0.01, metadata={"min": 0})
    warmup_ratio: float = field(default=0.1, metadata=FRACTION)
    # float32 by default: bf16 rounds differently on CPUs with AMX, with avx512_bf16 and without
    # either (the same fit gave other metrics on another machine), and a CPU without bf16 units
    # multiplies bf16 ~50x slower than float32. On a GPU, bf16-mixed is the fast choice.
    precision: Literal["bf16-mixed", "32-true", "16-mixed"] = "32-true"
    # early stopping and best-weights metric (another val/ metric is generated per epoch)
    monitor: str = field(default="val/loss", metadata={"metric": "val"})
    monitor_mode: Literal["auto", "min", "max"] = "auto"  # auto: min for a loss, max for any other metric
    patience: int = field(default=1, metadata={"min": 0})  # epochs without improvement before stopping
    # fraction (<=1.0) of training batches per epoch
    limit_train_batches: float = field(default=1.0, metadata={"gt": 0, "max": 1})
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
    splits: tuple[Literal["val", "test"], ...] = field(default=("val", "test"), metadata={"nonempty": True})
    # prompts per generation batch; measured here on the test split: 128 takes 9.1-9.5 s, 64 11.5-13.9 s, 256 9.8 s
    batch_size: int = field(default=128, metadata={"min": 1})
    max_new_tokens: int = field(default=64, metadata={"min": 1})
    # sentence-transformers name or path; empty: the bundled all-MiniLM-L6-v2
    embedder: str = field(default="", metadata={"embedder": True})


@dataclass
class TrackingConfig:
    uri: str = field(
        default="sqlite:///mlruns/mlflow.db",
        metadata={"check": (is_tracking_uri, "sqlite:///PATH, http(s)://HOST, postgresql://... or file:PATH")},
    )
    experiment: str = field(default="persona-lab", metadata={"nonempty": True})
    # artifact root for experiments this project creates
    artifacts: str = field(default="mlruns/artifacts", metadata={"nonempty": True, "directory": True})


@dataclass
class ClusteringConfig:
    algorithm: Literal["kmeans", "agglomerative", "dbscan"] = "kmeans"
    features: Literal["behaviour", "description"] = "behaviour"
    # clusters (kmeans, agglomerative); 0: the k in [k_min, k_max] with the best silhouette
    k: int = field(default=0, metadata={"min": 0})
    k_min: int = field(default=2, metadata={"min": 2})  # a silhouette needs two clusters
    k_max: int = field(default=12, metadata={"check": (lambda v, cfg: v >= cfg.k_min, "at least k_min")})
    eps: float = field(default=0.3, metadata={"gt": 0})  # DBSCAN: neighbourhood radius in cosine distance
    # DBSCAN: core point size; noise points form a cluster of their own
    min_samples: int = field(default=3, metadata={"min": 1})
    # description features: sentence-transformers name or path; empty: bundled MiniLM
    embedder: str = field(default="", metadata={"embedder": True})
    seed: int = field(default=0, metadata=SEED)


@dataclass
class ExperimentConfig:
    method: str = "unified_lora"
    # a local HF directory or a hub name (e.g. Qwen/Qwen2.5-0.5B-Instruct)
    base_model: str = field(default="base", metadata={"nonempty": True})  # the shipped base (base/README.md)
    seed: int = field(default=0, metadata=SEED)
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


def _read_override(key: str, value: OverrideText) -> Any:
    if not value.strip():
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: {str(value)!r} is not a value (a number, true/false, text or [a, b])") from None


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if isinstance(value, OverrideText) and origin in (tuple, list) and _is_text(args[0] if args else str):
        # "a,b" or "[a, b]": split as text, never read as YAML (a digit run id stays text)
        value = [v.strip() for v in value.strip().removeprefix("[").removesuffix("]").split(",") if v.strip()]
    elif isinstance(value, OverrideText):
        value = str(value) if _is_text(kind) else _read_override(key, value)
    if dataclasses.is_dataclass(kind):
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
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
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


BOUNDS = {
    "min": (operator.ge, "at least"),
    "max": (operator.le, "at most"),
    "gt": (operator.gt, "above"),
    "lt": (operator.lt, "below"),
}


def _limits(meta) -> str:
    """A field's limits in words: "at least 0, below 1"."""
    return ", ".join(f"{words} {meta[name]}" for name, (_, words) in BOUNDS.items() if name in meta)


def _check_limits(key: str, value: Any, meta) -> None:
    """Raise a ConfigError naming `key` if `value` breaks its field's own limits (module docstring)."""
    if value is None:
        return
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{key}: {value!r} is not allowed (a finite number)")
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if number and not all(holds(item, meta[name]) for name, (holds, _) in BOUNDS.items() if name in meta):
            raise ConfigError(f"{key}: {value!r} is not allowed ({_limits(meta)})")
        if "choices" in meta and item not in meta["choices"]:
            raise ConfigError(f"{key}: {item!r} is not allowed (allowed: {', '.join(map(str, meta['choices']))})")
    if meta.get("nonempty") and not (value.strip() if isinstance(value, str) else value):
        raise ConfigError(f"{key}: must not be empty")
    if "length" in meta and len(value) != meta["length"]:
        raise ConfigError(f"{key}: {len(value)} values given, {meta['length']} needed")
    if meta.get("directory") and Path(value).exists() and not Path(value).is_dir():
        raise ConfigError(f"{key}: {value} is a file, not a directory")


def build(cls, values: dict, prefix: str = ""):
    """Instance of dataclass `cls` from `values`, every key, type and limit checked."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        where = prefix or cls.__name__
        raise ConfigError(f"{where}: expected a mapping of {', '.join(names)}, got {values!r}")
    hints = typing.get_type_hints(cls)
    where = f"{prefix}." if prefix else ""
    unknown = sorted(map(str, set(values) - set(names)))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(names)})")
    config = cls(**{k: _coerce(f"{where}{k}", v, hints[k]) for k, v in values.items()})
    for f in dataclasses.fields(cls):
        _check_limits(f"{where}{f.name}", getattr(config, f.name), f.metadata)
    for f in dataclasses.fields(cls):  # then the rules across fields, each field known good on its own
        value = getattr(config, f.name)
        if "check" in f.metadata and not f.metadata["check"][0](value, config):
            raise ConfigError(f"{where}{f.name}: {value!r} is not allowed ({f.metadata['check'][1]})")
    return config


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
