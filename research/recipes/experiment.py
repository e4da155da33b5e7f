"""Loading an experiment's config: dataclass defaults < YAML file < --method < key=value,
with the method's own settings (`method_args`) checked against its registered config class.
The config comes back whole and valid (types, ranges, choices: research/config.py), so a
run, a study or a cache entry is never made for a config that cannot train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from research.config import ConfigError, ExperimentConfig, build, merge_trees, parse_overrides, read_yaml
from research.evaluation.metrics import METRICS
from research.modules import METHODS

# the names a field with metadata {"metric": kind} may hold: what fit monitors (the loss, or a
# metric generated on val after each epoch), or a column of a run's per-persona table
METRIC_NAMES = {"val": ("val/loss", *(f"val/{metric}" for metric in METRICS)), "per_persona": METRICS}


def check_metric_names(config, prefix: str = "") -> None:
    """Every metric-naming field of `config` (and of its nested configs) names a metric."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_metric_names(value, f"{key}.")
        elif "metric" in f.metadata and value not in METRIC_NAMES[f.metadata["metric"]]:
            allowed = ", ".join(METRIC_NAMES[f.metadata["metric"]])
            raise ConfigError(f"{key}: {value!r} is not a metric (allowed: {allowed})")


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), method: str | None = None
) -> ExperimentConfig:
    values: dict = {}
    if path:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    if method:
        values["method"] = method
    values = merge_trees(values, parse_overrides(list(overrides)))
    name = values.get("method", ExperimentConfig.method)
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method: {name!r} is not registered (allowed: {', '.join(sorted(METHODS))})")
    method_args = values.pop("method_args", None) or {}
    cfg = build(ExperimentConfig, values)
    cfg.method_args = build(METHODS[name].config_class, method_args, "method_args")
    check_metric_names(cfg)
    return cfg
