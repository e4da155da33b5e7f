"""Loading an experiment's config: dataclass defaults < YAML file < --method < key=value,
with the method's own settings (`method_args`) checked against its registered config class."""

from __future__ import annotations

from pathlib import Path

import yaml

from research.config import ConfigError, ExperimentConfig, build, merge_trees, parse_overrides
from research.modules import METHODS


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), method: str | None = None
) -> ExperimentConfig:
    values: dict = {}
    if path:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if method:
        values["method"] = method
    values = merge_trees(values, parse_overrides(list(overrides)))
    name = values.get("method", ExperimentConfig.method)
    if name not in METHODS:
        raise ConfigError(f"method: {name!r} is not registered (allowed: {', '.join(sorted(METHODS))})")
    method_args = values.pop("method_args", None) or {}
    cfg = build(ExperimentConfig, values)
    cfg.method_args = build(METHODS[name].config_class, method_args, "method_args")
    return cfg
