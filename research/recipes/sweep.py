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
- Checked before the study or any run exists: the space file (its sections, and every config
  a trial may draw), the config, the data, the base model, the source runs and the storage
  URL; bad input is one error (exit 2) that creates nothing.
- Dead or alive: every worker beats Optuna's heartbeat (database storages: SQLite,
  PostgreSQL) while it runs a trial; a trial whose worker stopped beating for the grace
  period is failed, by whichever worker starts a trial next, and its MLflow run marked
  FAILED (tag `error`). A trial another machine is running keeps beating and is never
  touched. The journal file (several workers on one host) has no heartbeat: each trial
  records its worker's process (pid and start time), and a RUNNING trial is failed when
  that process no longer exists.
- Budget: the study stops at its trial count (COMPLETE + PRUNED) however many workers or
  machines join. Each worker runs until the count is reached. A trial asked for while
  the remaining places are held by running trials waits until they end (or are failed
  as their worker's), then runs in a freed place, or is not run once the count is done
  (FAIL with `surplus=true`). Failed trials do not count, so they are replaced.
- Samplers are seeded per trial (seed + trial number): workers on any machine draw
  different trials (a random sampler's draws do not even depend on how many workers ran;
  TPE's also depend on which trials had finished when a trial was asked for).
- One study, one lineage: the study records the dataset, splits, prompt settings and base
  model fingerprint when it is created; a worker whose local data or base differ refuses
  to join, naming what differs.
- Sources (hybrid, constrained, merges): resolved once when the study starts and recorded
  on the parent run (tags `source.<field>`), so every trial builds on the same runs.
- Storage: SQLite beside the MLflow store for one worker; Optuna's journal file for
  several on one host; any Optuna storage URL (postgresql://...) given as `storage`.
  The study exists before any worker starts. Each worker loads the base model and the
  tokenized data once, not per trial.
- GPUs: each worker takes one of this host's GPUs (every visible one, or the list given)
  and sees only it (CUDA_VISIBLE_DEVICES), so no two share one; each trial fits on one
  device (train.devices=1) and its run is tagged `gpu`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from research.config import SEED, ConfigError, ExperimentConfig, build, read_yaml
from research.recipes.experiment import load_config
from research.recipes.run import ensure_data_and_base
from research.recipes.train import GenerativeValidation, prepare, run_tags, train_and_evaluate
from research.tracking.registry import register
from research.tracking.runs import experiment_id, require_server
from research.tracking.sources import LINEAGE, resolve_sources

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class SweepSpec:
    objective: str = field(
        default="val/embedding_similarity",
        metadata={"check": (lambda v, _: v.startswith("val/"), "must be a val/ metric: test never steers a sweep")},
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = field(default=20, metadata={"min": 1})
    # the sections below stay plain mappings (the study's name hashes them as written);
    # each is checked against the dataclass of the same name further down
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    space: dict = field(default_factory=dict)  # config key -> SpaceParam
    # seconds: how often a worker beats, and how long a silent trial lives before it is failed
    heartbeat: dict = field(default_factory=lambda: {"interval": 20, "grace": 120})


@dataclass
class Sampler:
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = field(default=None, metadata=SEED)


@dataclass
class Pruner:
    name: Literal["median", "threshold", "none"] = "median"
    startup_trials: int = field(default=2, metadata={"min": 0})  # median: trials before any is pruned
    lower: float | None = None  # threshold: prune below this
    upper: float | None = field(
        default=None,
        metadata={"check": (lambda v, p: p.name != "threshold" or {v, p.lower} != {None}, "threshold: lower or upper")},
    )


@dataclass
class Heartbeat:
    interval: int = field(default=20, metadata={"min": 1})
    grace: int = field(default=120, metadata={"min": 1})


@dataclass
class SpaceParam:
    type: str = field(default="", metadata={"choices": ("float", "int", "categorical")})
    low: float | None = field(
        default=None,
        metadata={
            "check": (
                lambda v, p: p.type == "categorical" or (v is not None and (p.type == "float" or v == int(v))),
                "float and int need low and high (integers for int)",
            )
        },
    )
    high: float | None = field(
        default=None,
        metadata={
            "check": (
                lambda v, p: (
                    p.type == "categorical"
                    or (v is not None and p.low is not None and p.low <= v and (p.type == "float" or v == int(v)))
                ),
                "at least low (an integer for int)",
            )
        },
    )
    log: bool = field(default=False, metadata={"check": (lambda v, p: not v or (p.low or 0) > 0, "log needs low > 0")})
    choices: tuple[Any, ...] | None = field(
        default=None, metadata={"check": (lambda v, p: p.type != "categorical" or bool(v), "categorical needs choices")}
    )


def load_spec(method: str, path: str | Path | None = None, overrides: list[str] = ()) -> SweepSpec:
    """The search space of `path` (default sweeps/METHOD.yaml), checked whole: its sections, and
    every config a trial may draw (each choice, each bound) with the fixed `overrides`."""
    path = Path(path) if path else SWEEPS_DIR / f"{method}.yaml"
    if not path.exists():
        raise ConfigError(f"no search space for {method}: {path} does not exist")
    try:
        spec = build(SweepSpec, read_yaml(path) or {})
        sections = {"sampler": Sampler, "pruner": Pruner, "heartbeat": Heartbeat}
        for section, kind in sections.items():
            build(kind, getattr(spec, section), section)
        for key, param in spec.space.items():
            param = build(SpaceParam, param, f"space.{key}")
            for value in param.choices if param.type == "categorical" else (param.low, param.high):
                draw = int(value) if param.type == "int" else value
                load_config(None, [*overrides, f"{key}={draw}"], method)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
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


# Where things are on one machine, not what the study is: each machine has its own copies
# (the study's lineage check compares their content) and reaches the servers by its own URL.
LOCAL_KEYS = (
    "data.dir",
    "data.cache_dir",
    "base_model",
    "tracking.uri",
    "tracking.artifacts",
    "train.accelerator",
    "train.devices",
    "train.strategy",
)


def study_name(method: str, spec: SweepSpec, overrides: list[str]) -> str:
    """The method and a hash of the search space and the overrides that change what is trained
    (not the heartbeat's timing, which is how workers run, not what)."""
    defining = sorted(o for o in overrides if o.split("=", 1)[0] not in LOCAL_KEYS)
    settings = {k: v for k, v in spec.__dict__.items() if k != "heartbeat"}
    digest = hashlib.sha256(json.dumps([settings, defining], sort_keys=True).encode())
    return f"{method}-{digest.hexdigest()[:8]}"


def default_storage(tracking_uri: str, workers: int) -> str:
    """Beside the MLflow store: SQLite for one worker, a journal file for several."""
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent if tracking_uri.startswith("sqlite:///") else Path()
    return f"journal:{folder / 'optuna.journal'}" if workers > 1 else f"sqlite:///{folder / 'optuna.db'}"


@dataclass(frozen=True)
class MarkRunFailed:
    """Optuna's stale-trial callback: the failed trial's MLflow run becomes FAILED."""

    tracking_uri: str
    experiment: str

    def __call__(self, study, trial) -> None:
        import mlflow

        _fail_runs(mlflow.tracking.MlflowClient(self.tracking_uri), self.experiment, study.study_name, trial.number)


def _fail_runs(client, experiment: str, study: str, number: int) -> None:
    for run in client.search_runs(
        [experiment],
        f"tags.study = '{study}' and tags.trial = '{number}' and attributes.status = 'RUNNING'",
    ):
        client.set_tag(run.info.run_id, "error", "interrupted: the worker running this trial stopped")
        client.set_terminated(run.info.run_id, "FAILED")


DATABASES = ("sqlite", "postgresql", "mysql")  # Optuna's RDB storages (a dialect may name a driver: postgresql+psycopg)


def check_storage_url(url: str) -> None:
    """--storage: sqlite:///PATH, journal:PATH, or the URL of a database server that answers."""
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        valid = rest.startswith("///") and len(rest) > 3
    elif scheme == "journal":
        valid = bool(rest.strip())
    else:
        valid = scheme.split("+", 1)[0] in DATABASES and rest.startswith("//") and len(rest) > 2
    if not valid:
        raise ConfigError(
            f"--storage {url!r}: not a storage URL (sqlite:///PATH, journal:PATH, postgresql://USER@HOST/DB)"
        )
    if scheme not in ("sqlite", "journal"):
        require_server(url, "--storage")


def open_storage(url: str, heartbeat: dict | None = None, on_stale: MarkRunFailed | None = None):
    """Optuna storage for `url`; database storages beat a heartbeat (`heartbeat`: interval
    and grace seconds), and `on_stale` is called for each trial failed for silence. A
    database that cannot be reached or opened is a ConfigError naming the URL."""
    import optuna
    import sqlalchemy
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    heartbeat = heartbeat or SweepSpec().heartbeat
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=int(heartbeat["interval"]),
            grace_period=int(heartbeat["grace"]),
            heartbeat_stale_trial_callback=on_stale,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:  # unreachable, refused, or no driver for it
        raise ConfigError(f"--storage {url}: cannot open it ({str(err).splitlines()[0]})") from None


class PerTrialSeed(optuna.samplers.BaseSampler):
    """An Optuna sampler that is `make(seed + trial number)` for each trial: workers on any
    machine, each with its own sampler object, never share a random stream."""

    def __init__(self, make, seed: int | None) -> None:
        self.make, self.seed, self.current = make, seed, make(seed)

    def before_trial(self, study, trial) -> None:
        self.current = self.make(None if self.seed is None else self.seed + trial.number)
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def _sampler(spec: SweepSpec):
    """The YAML's sampler, seeded per trial."""
    import optuna

    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    name = spec.sampler.get("name", "tpe")  # one of them: load_spec checked it
    return PerTrialSeed(lambda seed: samplers[name](seed=seed), spec.sampler.get("seed"))


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
    return pruners[name]()  # one of them: load_spec checked it


COUNTED = ("COMPLETE", "PRUNED")  # the trial states the budget counts


class BudgetReached(Exception):
    """A trial asked for after the study's budget was taken: it is not run."""


class StopAfterFailures:
    """Stop this worker after `limit` failed trials in a row: failed trials do not count
    towards the budget, so a config that always fails would be retried forever."""

    def __init__(self, limit: int = 3) -> None:
        self.limit, self.in_a_row = limit, 0

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.user_attrs.get("surplus"):
            return
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= self.limit:
            print(f"{self.limit} trials in a row failed: this worker stops (see the runs' error tags)")
            study.stop()


def _process_identity(pid: int | None = None) -> dict:
    """This machine and a process on it; the start time tells a reused pid from the original."""
    import psutil

    process = psutil.Process(pid)
    return {"host": socket.gethostname(), "pid": process.pid, "started": process.create_time()}


def _alive(worker: dict) -> bool:
    import psutil

    try:
        return _process_identity(worker["pid"])["started"] == worker["started"]
    except psutil.NoSuchProcess:
        return False


@dataclass
class Sweep:
    method: str
    overrides: list[str]
    spec: SweepSpec
    name: str
    storage: str
    budget: int
    tracking_uri: str
    experiment: str
    parent_run_id: str = ""
    gpu: str = ""  # the GPU this worker sees (empty: none assigned)

    def study(self):
        return optuna.load_study(
            study_name=self.name,
            storage=open_storage(self.storage, self.spec.heartbeat, MarkRunFailed(self.tracking_uri, self.experiment)),
            sampler=_sampler(self.spec),
            pruner=_pruner(self.spec),
        )

    def claim(self, trial) -> None:
        """Run this trial only if fewer than `budget` trials before it are done or running
        (trial numbers are given out one by one by the storage, so two workers asking at
        once cannot both take the last place). While the places are held by trials still
        running, wait: each ends, or is failed once its worker is known to have stopped,
        and then frees its place, so a dead worker's trial is replaced, not lost."""
        from optuna.trial import TrialState

        trial.set_user_attr("worker", _process_identity())
        client = None
        while True:
            before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
            done = sum(t.state.name in COUNTED for t in before)
            running = sum(t.state == TrialState.RUNNING for t in before)
            if done + running < self.budget:
                return
            if done >= self.budget:
                trial.set_user_attr("surplus", True)
                trial.study.stop()
                raise BudgetReached(f"trial {trial.number} not run: the study's {self.budget} trials are done")
            if client is None:
                import mlflow

                client = mlflow.tracking.MlflowClient(self.tracking_uri)
            time.sleep(self.spec.heartbeat["interval"])  # this trial's own heartbeat goes on meanwhile
            fail_stopped_workers(trial.study, client, self.experiment, self.spec.heartbeat["grace"])

    def objective(self, trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        self.claim(trial)
        cfg = load_config(None, [*self.overrides, *suggest(trial, self.spec.space)], self.method)
        callbacks = []
        if self.spec.pruner.get("name", "median") != "none":
            if self.spec.objective != "val/loss":
                callbacks.append(GenerativeValidation(cfg))
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=self.spec.objective))
        tags = {"study": self.name, "trial": str(trial.number), **({"gpu": self.gpu} if self.gpu else {})}
        result = train_and_evaluate(cfg, self.parent_run_id, tags, callbacks)
        trial.set_user_attr("run_id", result.run_id)
        if self.spec.objective not in result.metrics:
            raise ConfigError(
                f"objective {self.spec.objective} is not a logged metric (have: {', '.join(result.metrics)})"
            )
        return result.metrics[self.spec.objective]

    def work(self) -> None:
        """Run trials in this process until the study has `budget` finished ones."""
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        study = self.study()
        if _counted(study) >= self.budget:
            return
        stop_at_budget = MaxTrialsCallback(self.budget, states=tuple(TrialState[name] for name in COUNTED))
        study.optimize(
            self.objective, catch=(Exception,), gc_after_trial=True, callbacks=[stop_at_budget, StopAfterFailures()]
        )


def _worker(sweep: Sweep) -> None:
    sweep.work()


def visible_gpus() -> list[str]:
    """This host's GPUs as CUDA names them: CUDA_VISIBLE_DEVICES's entries, or every index."""
    import torch

    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [gpu for gpu in visible.split(",") if gpu]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(workers: int, gpus: list[str]) -> list[str | None]:
    """Each worker's own GPU, the first `workers` of `gpus` (a trial fits on one device, so a
    worker has no use for a second). Without GPUs the workers share the CPU (None each); more
    workers than GPUs would share one, and are refused."""
    if not gpus:
        return [None] * workers
    if workers > len(gpus):
        raise ConfigError(
            f"{workers} workers on {len(gpus)} GPU(s) ({','.join(gpus)}) would share a GPU: run at most {len(gpus)}"
        )
    return gpus[:workers]


def _start_worker(context, sweep: Sweep, gpu: str | None):
    """A worker process that sees only `gpu` (as cuda:0). CUDA reads CUDA_VISIBLE_DEVICES once,
    when a process first uses it, so the process is started with it already set."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        process = context.Process(target=_worker, args=(dataclasses.replace(sweep, gpu=gpu or ""),))
        process.start()
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
    return process


def _counted(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(TrialState[name] for name in COUNTED)))


def fail_stopped_workers(study, client, experiment: str, grace: float) -> int:
    """Fail the RUNNING trials whose worker stopped, and mark their MLflow runs FAILED.
    Database storages: Optuna's heartbeat (silent for the grace period). The journal file:
    the trial's worker process, on this host, no longer exists (one asked for but not yet
    claimed by any process is left for `grace` seconds)."""
    from datetime import datetime

    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    if isinstance(study._storage, BaseHeartbeat):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():  # experimental in name only: Optuna calls it before every trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # its callback marks the runs FAILED
        return len({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            stopped = (datetime.now() - trial.datetime_start).total_seconds() > grace
        else:
            stopped = worker["host"] == socket.gethostname() and not _alive(worker)
        if stopped:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            _fail_runs(client, experiment, study.study_name, trial.number)
            failed += 1
    return failed


def check_lineage(study, cfg) -> None:
    """Record what the study is made on when it is new; refuse a worker whose local data,
    splits, prompt settings or base model differ, naming what differs."""
    mine = {key: run_tags(cfg)[key] for key in LINEAGE}
    recorded = study.user_attrs.get("lineage")
    if recorded is None:
        study.set_user_attr("lineage", mine)
        # two machines creating the study at once: the lineage written last is the study's
        recorded = study._storage.get_study_user_attrs(study._study_id)["lineage"]
    for key in LINEAGE:
        if recorded.get(key) != mine[key]:
            raise ConfigError(
                f"study {study.study_name} was created on {key} {recorded.get(key)!r}, this worker has "
                f"{mine[key]!r} (data.dir={cfg.data.dir}, base_model={cfg.base_model}): it does not join; use the "
                "study's data and base model"
            )


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

    states = {s.name: 0 for s in TrialState} | {"SURPLUS": 0}  # surplus: FAIL, never run (the budget was taken)
    for trial in study.get_trials(deepcopy=False):
        states["SURPLUS" if trial.user_attrs.get("surplus") else trial.state.name] += 1
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
    gpus: list[str] | None = None,
) -> dict:
    """Create or join the study, run trials on `workers` processes until it has its trial
    count, and summarise it on the parent MLflow run. Each worker takes one of `gpus` (default:
    every GPU this host shows). Any number of machines may run this at once on one storage and
    tracking server."""
    import mlflow

    overrides = list(overrides)
    if storage is not None:
        check_storage_url(storage)
    spec = load_spec(method, spec_path, overrides)
    cfg = load_config(None, overrides, method)
    if cfg.train.devices != "1" or cfg.train.strategy != "auto":
        raise ConfigError(
            "a sweep trial fits on one device (train.devices=1, train.strategy=auto); a sweep spreads over GPUs "
            "with its workers, one GPU each (--workers N [--gpus LIST])"
        )
    available = visible_gpus() if gpus is None else gpus
    assigned = worker_gpus(workers, available)
    defaults = ExperimentConfig()
    if (cfg.data.dir, cfg.base_model) == (defaults.data.dir, defaults.base_model):
        ensure_data_and_base(cfg)  # a fresh clone's `make sweep`; data or a base named elsewhere must exist
    prepare(cfg)  # data, base, sources, adapted layers: checked before the study or any run exists
    experiment = experiment_id(cfg.tracking)
    name = study_name(method, spec, overrides)
    storage = storage or default_storage(cfg.tracking.uri, workers)
    on_stale = MarkRunFailed(cfg.tracking.uri, experiment)
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage, spec.heartbeat, on_stale),
        direction=spec.direction,
        sampler=_sampler(spec),
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    check_lineage(study, cfg)
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    interrupted = fail_stopped_workers(study, client, experiment, spec.heartbeat["grace"])
    budget = trials or spec.trials
    sweep = Sweep(method, overrides, spec, name, storage, budget, cfg.tracking.uri, experiment)
    sweep.parent_run_id = _parent_run(client, experiment, sweep)
    sweep.overrides = [*overrides, *_sources_once(client, cfg, experiment, sweep.parent_run_id)]
    done = _counted(study)
    print(
        f"study {name} ({storage}): {done} of {budget} trials done, running on {workers} worker(s) here"
        + (f"; {interrupted} trial(s) of stopped workers marked failed" if interrupted else "")
    )
    if available:
        print(", ".join(f"worker {k}: GPU {gpu}" for k, gpu in enumerate(assigned)))
    if unused := available[workers:]:
        print(f"GPU {','.join(unused)} unused: --workers {len(available)} would use every GPU")
    if workers == 1 and assigned[0] is None:
        sweep.work()
    elif done < budget:
        context = multiprocessing.get_context("spawn")
        processes = [_start_worker(context, sweep, gpu) for gpu in assigned]
        for process in processes:
            process.join()
    fail_stopped_workers(study, client, experiment, spec.heartbeat["grace"])
    summary = _summarise(study, client, sweep.parent_run_id)
    best_registered = summary["best"] is not None and client.search_model_versions(
        f"run_id = '{summary['best_run_id']}'"
    )  # by another machine of this study
    if summary["best"] is not None and not best_registered and client.list_artifacts(summary["best_run_id"], "adapter"):
        version = register(cfg.tracking.uri, summary["best_run_id"])  # alias candidate
        client.set_tag(sweep.parent_run_id, "registered", f"{version.name}/{version.version}")
        summary["registered"] = f"{version.name} version {version.version}"
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if _counted(study) >= budget or not running:  # else another machine is still at work
        client.set_terminated(sweep.parent_run_id, "FINISHED")
    return {"study": name, "parent_run_id": sweep.parent_run_id, **summary}
