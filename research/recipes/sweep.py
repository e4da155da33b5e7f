"""Optuna sweeps: `research sweep --method NAME` / `make sweep METHOD=NAME`.

One Optuna study per sweep, named after the method and a hash of its search space and
overrides, so the same command resumes the same study. One parent MLflow run per
study (tag `sweep`), one child run per trial (tags `method`, `study`, `trial`); when
the sweep ends, the best trial's params (tags `best.<key>`), its metrics (`best/...`)
and Optuna's plots go to the parent, and the best trial's adapter is registered
(alias `candidate`).

- Space, objective (a `val/` metric, never test), direction, trials, sampler and pruner
  come from `sweeps/<method>.yaml`; pruning runs through optuna-integration's Lightning
  callback, on the objective computed after every validation epoch.
- Resume: a trial left RUNNING by a killed sweep is marked FAIL in Optuna and its
  MLflow run FAILED (tag `error`) before new trials start; finished ones are untouched.
- Sources (hybrid, constrained, merges): resolved once when the study starts and recorded
  on the parent run (tags `source.<field>`), so every trial builds on the same runs.
- Storage: SQLite beside the MLflow store for one worker; Optuna's journal file for
  several on one host; any Optuna storage URL (postgresql://...) given as `storage`.
  The study exists before any worker starts. Each worker loads the base model and the
  tokenized data once, not per trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from research.config import ConfigError, build
from research.recipes.experiment import load_config
from research.recipes.run import ensure_data_and_base
from research.recipes.train import GenerativeValidation, run_tags, train_and_evaluate
from research.tracking.registry import register
from research.tracking.runs import experiment_id
from research.tracking.sources import resolve_sources

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class SweepSpec:
    objective: str = "val/embedding_similarity"
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = 20
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    space: dict = field(default_factory=dict)


def load_spec(method: str, path: str | Path | None = None) -> SweepSpec:
    path = Path(path) if path else SWEEPS_DIR / f"{method}.yaml"
    if not path.exists():
        raise ConfigError(f"no search space for {method}: {path} does not exist")
    spec = build(SweepSpec, yaml.safe_load(path.read_text()) or {}, str(path))
    if not spec.objective.startswith("val/"):
        raise ConfigError(f"{path}: objective {spec.objective!r} must be a val/ metric (test never steers a sweep)")
    for key, param in spec.space.items():
        if param.get("type") not in ("float", "int", "categorical"):
            raise ConfigError(f"{path}: space.{key}.type must be float, int or categorical")
    return spec


def suggest(trial, space: dict) -> list[str]:
    """key=value overrides drawn from the search space."""
    overrides = []
    for key, param in space.items():
        if param["type"] == "categorical":
            value = trial.suggest_categorical(key, param["choices"])
        elif param["type"] == "int":
            value = trial.suggest_int(key, param["low"], param["high"], log=param.get("log", False))
        else:
            value = trial.suggest_float(key, param["low"], param["high"], log=param.get("log", False))
        overrides.append(f"{key}={value}")
    return overrides


def study_name(method: str, spec: SweepSpec, overrides: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([spec.__dict__, sorted(overrides)], sort_keys=True).encode())
    return f"{method}-{digest.hexdigest()[:8]}"


def default_storage(tracking_uri: str, workers: int) -> str:
    """Beside the MLflow store: SQLite for one worker, a journal file for several."""
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent if tracking_uri.startswith("sqlite:///") else Path()
    return f"journal:{folder / 'optuna.journal'}" if workers > 1 else f"sqlite:///{folder / 'optuna.db'}"


def open_storage(url: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def _sampler(spec: SweepSpec, worker: int = 0):
    """The YAML's sampler; each worker seeds its own, or parallel workers draw the same trials."""
    import optuna

    name = spec.sampler.get("name", "tpe")
    seed = spec.sampler.get("seed")
    seed = None if seed is None else seed + worker
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if name not in samplers:
        raise ConfigError(f"sampler.name: {name!r} is not allowed (allowed: {', '.join(samplers)})")
    return samplers[name](seed=seed)


def _pruner(spec: SweepSpec):
    import optuna

    name = spec.pruner.get("name", "median")
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=spec.pruner.get("startup_trials", 2)),
        "threshold": lambda: optuna.pruners.ThresholdPruner(
            lower=spec.pruner.get("lower"), upper=spec.pruner.get("upper")
        ),
        "none": optuna.pruners.NopPruner,
    }
    if name not in pruners:
        raise ConfigError(f"pruner.name: {name!r} is not allowed (allowed: {', '.join(pruners)})")
    return pruners[name]()


@dataclass
class Sweep:
    method: str
    overrides: list[str]
    spec: SweepSpec
    name: str
    storage: str
    parent_run_id: str = ""
    worker: int = 0

    def study(self):
        import optuna

        return optuna.load_study(
            study_name=self.name,
            storage=open_storage(self.storage),
            sampler=_sampler(self.spec, self.worker),
            pruner=_pruner(self.spec),
        )

    def objective(self, trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        cfg = load_config(None, [*self.overrides, *suggest(trial, self.spec.space)], self.method)
        callbacks = []
        if self.spec.pruner.get("name", "median") != "none":
            if self.spec.objective != "val/loss":
                callbacks.append(GenerativeValidation(cfg))
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=self.spec.objective))
        tags = {"study": self.name, "trial": str(trial.number)}
        result = train_and_evaluate(cfg, self.parent_run_id, tags, callbacks)
        trial.set_user_attr("run_id", result.run_id)
        if self.spec.objective not in result.metrics:
            raise ConfigError(
                f"objective {self.spec.objective} is not a logged metric (have: {', '.join(result.metrics)})"
            )
        return result.metrics[self.spec.objective]

    def work(self, trials: int) -> None:
        """Run `trials` trials of the study in this process."""
        self.study().optimize(self.objective, n_trials=trials, catch=(Exception,), gc_after_trial=True)


def _worker(sweep: Sweep, trials: int) -> None:
    sweep.work(trials)


def _tracking(overrides: list[str], method: str):
    cfg = load_config(None, overrides, method)
    return cfg, experiment_id(cfg.tracking)


def _fail_interrupted(study, client, experiment: str) -> int:
    """Mark trials a killed sweep left RUNNING as FAIL, and their MLflow runs FAILED."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        for run in client.search_runs(
            [experiment],
            f"tags.study = '{study.study_name}' and tags.trial = '{trial.number}' and attributes.status = 'RUNNING'",
        ):
            client.set_tag(run.info.run_id, "error", "interrupted: the sweep was killed during this trial")
            client.set_terminated(run.info.run_id, "FAILED")
    return len(stale)


def _parent_run(client, experiment: str, sweep: Sweep) -> str:
    found = client.search_runs([experiment], f"tags.study = '{sweep.name}' and tags.sweep = 'parent'", max_results=1)
    if found:  # resumed or extended: running again until this sweep ends
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(
        experiment,
        run_name=f"sweep {sweep.name}",
        tags={"sweep": "parent", "study": sweep.name, "method": sweep.method, "storage": sweep.storage},
    )
    client.log_dict(run.info.run_id, {"overrides": sweep.overrides, **sweep.spec.__dict__}, "sweep.json")
    return run.info.run_id


def _summarise(study, client, parent: str) -> dict:
    """Best trial's params and metrics, and Optuna's plots, onto the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState

    states = {s.name: 0 for s in TrialState}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] += 1
    for state, count in states.items():
        client.log_metric(parent, f"trials/{state.lower()}", count)
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return {"best": None, "states": states}
    best = study.best_trial
    best_run = client.get_run(best.user_attrs["run_id"])
    client.set_tag(parent, "best_trial", str(best.number))
    client.set_tag(parent, "best_run_id", best_run.info.run_id)
    for key, value in best.params.items():
        client.set_tag(parent, f"best.{key}", str(value))
    for key, value in best_run.data.metrics.items():
        client.log_metric(parent, f"best/{key}", value)
    plots = {
        "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
        "param_importances": optuna.visualization.matplotlib.plot_param_importances,
        "slice": optuna.visualization.matplotlib.plot_slice,
    }
    for name, plot in plots.items():
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials or params for this plot
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        with tempfile.TemporaryDirectory() as tmp:
            figure.savefig(Path(tmp) / f"{name}.png", dpi=110, bbox_inches="tight")
            client.log_artifact(parent, str(Path(tmp) / f"{name}.png"), "plots")
        matplotlib.pyplot.close("all")
    return {"best": best, "best_run_id": best_run.info.run_id, "states": states}


def _sources_once(client, cfg, experiment: str, parent: str) -> list[str]:
    """Overrides naming the runs the method builds on, resolved when the study starts and
    recorded on its parent run (tags `source.<field>`): every trial, and a resumed study on
    any machine, builds on the same runs, even when a newer one is trained meanwhile."""
    recorded = {
        key.removeprefix("source."): value
        for key, value in client.get_run(parent).data.tags.items()
        if key.startswith("source.")
    }
    if not recorded:
        resolved = resolve_sources(cfg.method_args, run_tags(cfg), experiment)
        recorded = {name: ",".join(s.run_id for s in runs) for name, runs in resolved.items()}
        for name, run_ids in recorded.items():
            client.set_tag(parent, f"source.{name}", run_ids)
    # a single-run field left empty is what was resolved; list fields are named by the user already
    return [f"method_args.{n}={ids}" for n, ids in recorded.items() if getattr(cfg.method_args, n) == ""]


def run_sweep(
    method: str,
    overrides: list[str] = (),
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    spec_path: str | Path | None = None,
) -> dict:
    """Create or resume the study, run its remaining trials on `workers` processes, and
    summarise it on the parent MLflow run."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    overrides = list(overrides)
    spec = load_spec(method, spec_path)
    cfg, experiment = _tracking(overrides, method)
    ensure_data_and_base(cfg)
    name = study_name(method, spec, overrides)
    storage = storage or default_storage(cfg.tracking.uri, workers)
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        direction=spec.direction,
        sampler=_sampler(spec),
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    interrupted = _fail_interrupted(study, client, experiment)
    sweep = Sweep(method, overrides, spec, name, storage)
    sweep.parent_run_id = _parent_run(client, experiment, sweep)
    sweep.overrides = [*overrides, *_sources_once(client, cfg, experiment, sweep.parent_run_id)]
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = max(0, (trials or spec.trials) - done)
    print(
        f"study {name} ({storage}): {done} trials done, {remaining} to run on {workers} worker(s)"
        + (f"; {interrupted} interrupted trial(s) marked failed" if interrupted else "")
    )
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    if workers == 1:
        sweep.work(remaining)
    elif remaining:
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_worker, args=(dataclasses.replace(sweep, worker=w), n))
            for w, n in enumerate(shares)
            if n
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    summary = _summarise(study, client, sweep.parent_run_id)
    if summary["best"] is not None and client.list_artifacts(summary["best_run_id"], "adapter"):
        version = register(cfg.tracking.uri, summary["best_run_id"])  # alias candidate
        client.set_tag(sweep.parent_run_id, "registered", f"{version.name}/{version.version}")
        summary["registered"] = f"{version.name} version {version.version}"
    client.set_terminated(sweep.parent_run_id, "FINISHED")
    return {"study": name, "parent_run_id": sweep.parent_run_id, **summary}
