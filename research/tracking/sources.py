"""Runs that a method builds on (hybrid on a unified run, merges on a per-persona run).

A method's config names a source run in a field whose metadata says which method
made it: `field(default="", metadata={"source_method": "unified_lora"})`. Before any
work, `resolve_sources` resolves an empty field to the latest finished run of that
method with the same lineage (LINEAGE: data content, splits, prompt settings, base
model), never a sweep trial or a seeds parent (name those explicitly), and refuses a
run that is missing, unfinished, of another method, or of another lineage, naming the
field that differs.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.artifacts import download_artifacts

from research.config import ConfigError
from research.modules.base import Source, source_fields
from research.tracking.runs import RunNotFound, find_run, iter_runs


class SourceError(ConfigError):
    """A source run that cannot be used; the message says why."""


# run tags that say what a run was trained and evaluated on; runs that build on each
# other or are compared must match on all of them
LINEAGE = ("dataset", "splits", "prompt", "base_fingerprint")


def lineage_difference(run, tags: dict[str, str]) -> str | None:
    """The first lineage tag on which `run` differs from `tags`, as "tag (run's vs wanted)"."""
    for key in LINEAGE:
        if run.data.tags.get(key) != tags.get(key):
            return f"{key} ({run.data.tags.get(key)!r} vs {tags.get(key)!r})"
    return None


def _implicit(run) -> bool:
    """A run an empty source field may resolve to: not a sweep trial, not a seeds parent."""
    return "trial" not in run.data.tags and "aggregate" not in run.data.tags


def find_source(method: str | None, run_id: str, tags: dict[str, str], experiment_id: str, field_name: str):
    """The MLflow run `run_id` (or the latest usable one) of `method` (None: any), checked against `tags`."""
    client = mlflow.tracking.MlflowClient()
    if not run_id:
        if missing := [key for key in LINEAGE if key not in tags]:
            raise SourceError(
                f"method_args.{field_name}: the run to match has no lineage tag {missing[0]} (made before runs "
                "recorded their lineage): name the source run explicitly or retrain"
            )
        same_lineage = " and ".join(f"tags.{key} = '{tags[key]}'" for key in LINEAGE)
        newest_first = iter_runs(
            client,
            experiment_id,
            f"tags.method = '{method}' and attributes.status = 'FINISHED' and {same_lineage}",
            ("attributes.start_time DESC",),
        )
        if (run := next((run for run in newest_first if _implicit(run)), None)) is None:
            raise SourceError(
                f"method_args.{field_name}: no finished {method} run (other than sweep trials and seeds parents) on dataset "
                f"{tags['dataset']}, splits {tags['splits']}, prompt {tags['prompt']}, base model {tags['base_model']}; "
                f"train one first (research train --method {method}) or name one with method_args.{field_name}=RUN_ID"
            )
        return run
    try:
        run = find_run(client, experiment_id, run_id)
    except RunNotFound as err:
        raise SourceError(f"method_args.{field_name}: {err}") from err
    checks = [
        ("method", run.data.tags.get("method"), method or run.data.tags.get("method")),
        ("status", run.info.status, "FINISHED"),
    ]
    for what, found, wanted in checks:
        if found != wanted:
            raise SourceError(f"method_args.{field_name}: run {run_id} has {what} {found!r}, this run needs {wanted!r}")
    if difference := lineage_difference(run, tags):
        raise SourceError(f"method_args.{field_name}: run {run_id} differs from this run in {difference}")
    return run


def resolve_sources(method_args, tags: dict[str, str], experiment_id: str) -> dict[str, list[Source]]:
    """The runs each source field of a method's config names, checked, their artifacts
    downloaded; an empty field means the latest usable run of its method. A tuple field
    with source_method "*" lists runs of any method; it may not be empty. `method_args`
    is left as it is: the recipe records what was resolved."""
    resolved = {}
    for name, method in source_fields(type(method_args), method_args).items():
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
