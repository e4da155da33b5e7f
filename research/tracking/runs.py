"""MLflow: one run per experiment, its whole config as params, tags that say what it
ran on, and a FAILED status with the error when it crashes. Runs are only ever
created, never reused, so nothing already logged is overwritten."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import polars as pl
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.exceptions import MlflowException

from research.config import ConfigError, TrackingConfig
from research.evaluation.metrics import METRICS

# The MLflow UI's runs table shows no metric column until one is chosen, and keeps that choice
# in the browser. A saved view is an experiment tag (the UI's "Views" menu; this key and
# envelope are what MLflow 3's UI writes), so every browser can open the study's columns.
STUDY_VIEW = "study"
STUDY_COLUMNS = ["attributes.`Dataset`"] + [
    f"metrics.`test/{m}`" for m in ("param_f1", "numerical_precision", "embedding_similarity", *METRICS[1:5])
]


def _experiment_tags() -> dict[str, str]:
    now = int(time.time() * 1000)
    state = {
        "selectedColumns": STUDY_COLUMNS,
        "columnWidths": dict.fromkeys(STUDY_COLUMNS[1:], 170),
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    view = {"name": "study metrics", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return {
        # the UI opens an experiment of this kind on its runs table, not the GenAI overview
        "mlflow.experimentKind": "custom_model_development",
        f"mlflow.sharedViewState.{STUDY_VIEW}": json.dumps(view),
    }


DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306}


def require_server(uri: str, key: str = "tracking.uri", timeout: float = 5.0) -> None:
    """A server's URL (a tracking server, a database) that nothing answers on is an error at
    once, naming `key`, before anything is written (MLflow would retry for minutes first)."""
    url = urlsplit(uri)
    try:
        port = url.port or DEFAULT_PORTS.get(url.scheme.split("+", 1)[0])
        socket.create_connection((url.hostname, port), timeout).close()
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{key} {uri}: no server answers there ({err})") from None


def experiment_id(cfg: TrackingConfig) -> str:
    if cfg.uri.split(":", 1)[0].split("+", 1)[0] in DEFAULT_PORTS:  # a server, not a file
        require_server(cfg.uri)
    if cfg.uri.startswith("sqlite:///"):
        Path(cfg.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        for key, value in _experiment_tags().items():
            if key not in experiment.tags:  # an experiment made before the tag existed
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None  # a tracking server stores artifacts itself (proxied)
    if not cfg.uri.startswith(("http://", "https://")):
        location = Path(cfg.artifacts).resolve().as_uri() if "://" not in cfg.artifacts else cfg.artifacts
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location, tags=_experiment_tags())
    except MlflowException:
        # another machine created it a moment ago: use theirs (anything else fails again here)
        if (experiment := mlflow.get_experiment_by_name(cfg.experiment)) is None:
            raise
        return experiment.experiment_id


def log_adapter_model(run, method: str, kind: str, base_model: str) -> str:
    """The run's `adapter/` as an MLflow 3 logged model: the runs table's Models column and a
    model page carrying the run's test metrics. The weights stay in the run's `adapter/`
    artifact, which sources and the registry read, so the logged model points there (tag
    `adapter_uri`) instead of holding a second copy. Registry versions stay linked to the
    run: MLflow's SQL registry records a version's model only for a `models:/<id>` source,
    which would serve the logged model's own (empty) artifacts."""
    model = mlflow.create_external_model(
        name=method,
        source_run_id=run.info.run_id,
        model_type=f"peft-{kind}",
        params={"base_model": base_model},
        tags={"adapter_uri": f"{run.info.artifact_uri}/adapter"},
        experiment_id=run.info.experiment_id,
    )
    return model.model_id


def runs_table_url(host: str, experiment: str) -> str:
    """The runs table with the study's metric columns and the dataset."""
    return f"{host.rstrip('/')}/#/experiments/{experiment}/runs?viewStateShareKey={STUDY_VIEW}"


def compare_url(host: str, experiment: str, run_ids: list[str]) -> str:
    """MLflow's side-by-side comparison of runs: every param and metric in one table."""
    return f"{host.rstrip('/')}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([experiment])}"


def iter_runs(client, experiment: str, filter_string: str = "", order_by: tuple[str, ...] = (), page: int = 1000):
    """Every run that matches, `page` at a time (MLflow returns at most a page per call, so
    a large sweep can push the run wanted past the first one)."""
    token = None
    while True:
        found = client.search_runs(
            [experiment], filter_string, order_by=list(order_by), max_results=page, page_token=token
        )
        yield from found
        if not (token := found.token):
            return


class RunNotFound(ConfigError):
    """A run id that names no run, or more than one."""


def find_run(client, experiment: str, run_id: str):
    """The run with this id, or the one run of `experiment` whose id starts with it (tables
    print 8 characters); an unknown or ambiguous id is an error that says so."""
    if len(run_id) == 32:
        try:
            return client.get_run(run_id)
        except MlflowException as err:
            raise RunNotFound(f"run {run_id} does not exist ({client.tracking_uri})") from err
    # asked of the store (two at most: one is the answer, two say it is ambiguous); an id is hex,
    # so nothing else is let into the filter
    matches = []
    if run_id.isalnum():
        matches = client.search_runs([experiment], f"attributes.run_id LIKE '{run_id}%'", max_results=2)
    if len(matches) != 1:
        found = "no run" if not matches else "more than one run"
        raise RunNotFound(f"run id {run_id!r}: {found} in experiment {experiment} starts with it")
    return matches[0]


def log_dataset(dialogues: pl.DataFrame, directory: str | Path, digest: str) -> None:
    """The dataset as the active run's MLflow dataset input (name, digest, schema, source), so
    the runs table's Dataset column shows what each run was trained and evaluated on."""
    directory = Path(directory).resolve()
    with warnings.catch_warnings():  # MLflow registers both "" and "file" for local paths, and says so
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_polars(
            dialogues, source=directory.as_uri(), name=f"{directory.parent.name}/{directory.name}", digest=digest
        )
    try:
        mlflow.log_input(dataset, context="train+eval")
    except MlflowException:
        # a run on another machine recorded this dataset at the same moment (the store's unique
        # key refuses the second insert); now it exists, and logging links this run to it
        mlflow.log_input(dataset, context="train+eval")


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def tracked_run(cfg: TrackingConfig, run_name: str, tags: dict[str, str], params: dict, parent_run_id=None):
    """An active MLflow run (nested under `parent_run_id` if given). On an exception it ends
    FAILED with the error as tag `error`; a pruned sweep trial ends KILLED, tagged `pruned`."""
    import optuna

    exp = experiment_id(cfg)
    run = mlflow.start_run(
        experiment_id=exp, run_name=run_name, tags={**tags, "git_sha": git_sha()}, parent_run_id=parent_run_id
    )
    try:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        yield run
    except optuna.TrialPruned as pruned:
        mlflow.set_tag("pruned", str(pruned) or "true")
        mlflow.end_run("KILLED")
        raise
    except BaseException as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into a run this project owns: it must not end
    the run when fit ends, since evaluation still logs to it."""

    def finalize(self, status: str = "success") -> None:
        pass
