"""Runs that a method builds on (hybrid on a unified run, merges on a per-persona run).

A method's config names a source run in a field whose metadata says which method
made it: `field(default="", metadata={"source_method": "unified_lora"})`. Before any
work, `resolve_sources` resolves an empty field to the latest finished run of that
method on the same dataset and base model, and refuses a run that is missing,
unfinished, of another method, or trained on other data or another base model.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from research.config import ConfigError
from research.modules.base import Source, source_fields


class SourceError(ConfigError):
    """A source run that cannot be used; the message says why."""


def find_source(method: str | None, run_id: str, tags: dict[str, str], experiment_id: str, field_name: str):
    """The MLflow run `run_id` (or the latest usable one) of `method` (None: any), checked against `tags`."""
    client = mlflow.tracking.MlflowClient()
    if not run_id:
        runs = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.method = '{method}' and attributes.status = 'FINISHED' "
                f"and tags.dataset = '{tags['dataset']}' and tags.base_fingerprint = '{tags['base_fingerprint']}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
        runs = [run for run in runs if "aggregate" not in run.data.tags][:1]  # a seeds parent has no adapter
        if not runs:
            raise SourceError(
                f"method_args.{field_name}: no finished {method} run on dataset {tags['dataset']} with base model "
                f"{tags['base_model']}; train one first (research train --method {method}) or name one "
                f"with method_args.{field_name}=RUN_ID"
            )
        return runs[0]
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise SourceError(
            f"method_args.{field_name}: run {run_id} does not exist ({mlflow.get_tracking_uri()})"
        ) from err
    checks = [
        ("method", run.data.tags.get("method"), method or run.data.tags.get("method")),
        ("status", run.info.status, "FINISHED"),
        ("dataset", run.data.tags.get("dataset"), tags["dataset"]),
        ("base model", run.data.tags.get("base_fingerprint"), tags["base_fingerprint"]),
    ]
    for what, found, wanted in checks:
        if found != wanted:
            raise SourceError(f"method_args.{field_name}: run {run_id} has {what} {found!r}, this run needs {wanted!r}")
    return run


def resolve_sources(method_args, tags: dict[str, str], experiment_id: str) -> dict[str, list[Source]]:
    """The runs each source field of a method's config names, checked, their artifacts
    downloaded; an empty field means the latest usable run of its method. A tuple field
    with source_method "*" lists runs of any method; it may not be empty. `method_args`
    is left as it is: the recipe records what was resolved."""
    resolved = {}
    for name, method in source_fields(type(method_args)).items():
        value = getattr(method_args, name)
        if method == "*":
            if not value:
                raise SourceError(f"method_args.{name}: name at least one finished run (RUN_ID,RUN_ID,...)")
            runs = [find_source(None, run_id, tags, experiment_id, name) for run_id in value]
        else:
            runs = [find_source(method, value, tags, experiment_id, name)]
        resolved[name] = [
            Source(run.info.run_id, run.data.tags["method"], Path(download_artifacts(run_id=run.info.run_id)))
            for run in runs
        ]
    return resolved
