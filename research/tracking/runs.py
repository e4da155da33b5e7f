"""MLflow: one run per experiment, its whole config as params, tags that say what it
ran on, and a FAILED status with the error when it crashes. Runs are only ever
created, never reused, so nothing already logged is overwritten."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import mlflow
from lightning.pytorch.loggers import MLFlowLogger

from research.config import TrackingConfig


def experiment_id(cfg: TrackingConfig) -> str:
    if cfg.uri.startswith("sqlite:///"):
        Path(cfg.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if cfg.uri.startswith(("http://", "https://")):  # a tracking server stores artifacts itself (proxied)
        return mlflow.create_experiment(cfg.experiment)
    location = Path(cfg.artifacts).resolve().as_uri() if "://" not in cfg.artifacts else cfg.artifacts
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


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
