"""Sweeps on a real Optuna study and a real MLflow store: parent and child runs, the best
trial on the parent, failed trials, and resuming after a SIGKILL mid-trial."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from research.config import ConfigError
from research.modules import METHODS
from research.recipes.experiment import load_config
from research.recipes.sweep import default_storage, load_spec, open_storage, run_sweep, study_name
from research.recipes.train import train_and_evaluate
from research.tracking.runs import experiment_id

FAST = ["train.max_epochs=1", "eval.splits=val"]


def _client(experiment):
    """(client, experiment id), the experiment created if needed."""
    cfg = load_config(None, experiment, "unified_lora")
    exp = experiment_id(cfg.tracking)
    return mlflow.tracking.MlflowClient(cfg.tracking.uri), exp


def _study(overrides, spec_path):
    cfg = load_config(None, overrides, "unified_lora")
    name = study_name("unified_lora", load_spec("unified_lora", spec_path), overrides)
    return optuna.load_study(study_name=name, storage=open_storage(default_storage(cfg.tracking.uri, 1)))


def test_sweep_logs_a_parent_and_one_child_per_trial_with_the_best_on_the_parent(experiment):
    overrides = [*experiment, *FAST]
    summary = run_sweep("unified_lora", overrides, trials=2)
    client, exp = _client(experiment)
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["trial"] for c in children) == ["0", "1"]
    assert {c.data.tags["study"] for c in children} == {summary["study"]} and parent.data.tags["sweep"] == "parent"
    assert {c.data.tags["method"] for c in children} == {"unified_lora"}
    best = summary["best"]
    assert parent.data.tags["best_run_id"] == best.user_attrs["run_id"]
    assert parent.data.metrics["best/val/embedding_similarity"] == pytest.approx(best.value)
    assert {f"best.{k}" for k in best.params} <= set(parent.data.tags)
    registered = client.get_model_version_by_alias("unified_lora", "candidate")
    assert registered.run_id == best.user_attrs["run_id"] and parent.data.tags["registered"].startswith("unified_lora/")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/complete"] == 2
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots

    again = run_sweep("unified_lora", overrides, trials=3)  # same command, one more trial: same study and parent
    finished = again["states"].get("COMPLETE", 0) + again["states"].get("PRUNED", 0)  # the median pruner may stop it
    assert again["parent_run_id"] == summary["parent_run_id"] and finished == 3


def test_a_failing_trial_is_failed_in_optuna_and_mlflow_with_the_error(experiment, monkeypatch):
    import research.recipes.train as recipe

    def crash(*args, **kwargs):  # a bug inside each trial's run, after every input was checked
        raise RuntimeError("fit crashed")

    monkeypatch.setattr(recipe, "fit", crash)
    overrides = [*experiment, *FAST]
    summary = run_sweep("unified_lora", overrides, trials=1)
    # failed trials do not count towards the budget: replaced, until 3 in a row stop the worker
    assert summary["states"]["FAIL"] == 3 and summary["best"] is None
    client, exp = _client(experiment)
    (run,) = client.search_runs([exp], f"tags.study = '{summary['study']}' and tags.trial = '0'")
    assert run.info.status == "FAILED" and "fit crashed" in run.data.tags["error"]


def test_a_sweep_objective_must_be_a_val_metric(tmp_path):
    from research.recipes.sweep import SWEEPS_DIR

    assert load_spec("unified_lora", SWEEPS_DIR / "unified_lora.yaml").objective.startswith("val/")
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: test/param_f1\nspace: {}\n")
    with pytest.raises(ConfigError, match="must be a val/ metric"):
        load_spec("unified_lora", bad)


def test_killed_sweep_resumes_with_the_interrupted_trial_failed_and_finished_ones_untouched(experiment, tmp_path):
    spec = tmp_path / "slow.yaml"  # trials long enough (~10 s) to be caught mid-way; a 3 s heartbeat grace
    spec.write_text(
        "trials: 2\npruner: {name: none}\nheartbeat: {interval: 1, grace: 3}\n"
        "space:\n  train.lr: {type: float, low: 1.0e-5, high: 2.0e-5}\n"
    )
    overrides = [*experiment, *FAST, "train.max_epochs=40", "train.patience=100"]
    client, exp = _client(experiment)
    command = [
        sys.executable,
        "-m",
        "research.cli",
        "sweep",
        "--method",
        "unified_lora",
        "--spec",
        str(spec),
        *overrides,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill once trial 0 is finished and trial 1 is running
            runs = client.search_runs([exp], "tags.trial = '1' and attributes.status = 'RUNNING'")
            if runs:
                break
            assert process.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("trial 1 never started")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = time.time()
    (first,) = client.search_runs([exp], "tags.trial = '0'")
    # resumed at once: the killed trial still holds the last place until its heartbeat is
    # overdue (grace 3 s); the new trial waits for that, then runs in the freed place
    run_sweep("unified_lora", overrides, spec_path=spec)
    study = _study(overrides, spec)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.get_trials()[1].datetime_complete.timestamp() >= killed_at + 3 - 1  # grace, less one beat
    interrupted = client.search_runs([exp], "tags.trial = '1'")
    assert len(interrupted) == 1 and interrupted[0].info.status == "FAILED"
    assert "interrupted" in interrupted[0].data.tags["error"]
    untouched = client.get_run(first.info.run_id)
    assert untouched.info.status == "FINISHED" and untouched.data.metrics == first.data.metrics


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_sweep_space_of_valid_config_keys(method):
    spec = load_spec(method)
    for key, param in spec.space.items():
        for value in param["choices"] if param["type"] == "categorical" else (param["low"], param["high"]):
            load_config(None, [f"{key}={value}"], method)  # raises ConfigError naming a bad key or value


def test_a_pruned_trial_shows_as_pruned_in_optuna_and_mlflow(experiment, tmp_path):
    spec = tmp_path / "prune.yaml"  # similarity never exceeds 1: pruned at the first validation epoch
    spec.write_text(
        "pruner: {name: threshold, lower: 1.5}\nspace:\n  train.lr: {type: float, low: 1.0e-4, high: 2.0e-4}\n"
    )
    overrides = [*experiment, *FAST, "train.max_epochs=3"]
    summary = run_sweep("unified_lora", overrides, trials=1, spec_path=spec)
    assert summary["states"]["PRUNED"] == 1
    client, exp = _client(experiment)
    (run,) = client.search_runs([exp], f"tags.study = '{summary['study']}' and tags.trial = '0'")
    assert run.info.status == "KILLED" and "pruned" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "val/embedding_similarity")
    assert len(history) == 1  # scored on generated val replies during fit, then stopped


def test_a_sourced_sweep_resolves_its_source_once_and_records_it_on_the_parent(source_runs, tmp_path):
    experiment, runs = source_runs
    spec = tmp_path / "hybrid.yaml"
    spec.write_text(
        "objective: val/embedding_similarity\ndirection: maximize\ntrials: 1\nsampler: {name: random, seed: 0}\npruner: {name: none}\n"
        "space:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
    )
    overrides = [*experiment, *FAST]
    first = run_sweep("hybrid_lora", overrides, spec_path=spec)
    client, exp = _client(experiment)
    assert client.get_run(first["parent_run_id"]).data.tags["source.unified_run"] == runs["unified_lora"]
    newer = train_and_evaluate(load_config(None, [*experiment, *FAST], "unified_lora"))  # trained meanwhile
    again = run_sweep("hybrid_lora", overrides, trials=2, spec_path=spec)  # resumed: still the recorded source
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{again['parent_run_id']}'")
    assert len(children) == 2 and {c.data.tags["source.unified_run"] for c in children} == {runs["unified_lora"]}
    client.delete_run(newer.run_id)  # the store is shared by the session's tests


def test_a_machine_with_another_base_model_refuses_to_join(data_root, base_dir, experiment, tmp_path):
    """The study records its lineage when it is created; a worker whose local base model
    differs (here: the same architecture retrained with another seed) does not join."""
    from conftest import TINY_BASE

    from research.models.base import BaseConfig, pretrain_from_dataset

    spec = tmp_path / "spec.yaml"
    spec.write_text("trials: 1\npruner: {name: none}\nspace:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n")
    experiment = [*experiment, *FAST]
    run_sweep("unified_lora", experiment, spec_path=spec)  # creates the study, one short trial
    other_base = tmp_path / "other_base"
    pretrain_from_dataset(data_root / "neutral", other_base, BaseConfig(**TINY_BASE, seed=1))
    elsewhere = [o for o in experiment if not o.startswith("base_model=")] + [f"base_model={other_base}"]
    with pytest.raises(ConfigError, match="was created on base_fingerprint .* this worker has"):
        run_sweep("unified_lora", elsewhere, spec_path=spec)


def test_on_a_journal_file_only_trials_of_processes_that_are_gone_are_failed(experiment, tmp_path):
    """Several workers on one host share a journal file, which has no heartbeat: a RUNNING
    trial is failed when its worker process no longer exists, never while it lives."""
    from research.recipes.sweep import _process_identity, fail_stopped_workers

    client, exp = _client(experiment)
    storage = open_storage(f"journal:{tmp_path / 'optuna.journal'}")
    study = optuna.create_study(study_name="s", storage=storage)
    ended = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = _process_identity(ended.pid)  # recorded while it ran, as a worker records itself
    ended.communicate()  # then it ends
    trials = {}
    for name, worker in (("gone", gone), ("alive", _process_identity())):
        trials[name] = study.ask()
        trials[name].set_user_attr("worker", worker)
        client.create_run(exp, tags={"study": "s", "trial": str(trials[name].number)})
    assert fail_stopped_workers(study, client, exp, grace=60) == 1
    states = {name: study._storage.get_trial(t._trial_id).state for name, t in trials.items()}
    assert states == {"gone": TrialState.FAIL, "alive": TrialState.RUNNING}
    runs = {r.data.tags["trial"]: r.info.status for r in client.search_runs([exp], "tags.study = 's'")}
    assert runs == {str(trials["gone"].number): "FAILED", str(trials["alive"].number): "RUNNING"}


def test_two_workers_on_one_host_share_a_journal_study_with_the_exact_budget_each_on_its_own_gpu(experiment):
    """Given two GPUs (a fake list here: the fits fall back to the CPU), each worker sees its
    own, and every trial's run names the GPU its worker had."""
    overrides = [*experiment, *FAST]
    summary = run_sweep("unified_lora", overrides, trials=3, workers=2, gpus=["0", "1"])
    cfg = load_config(None, overrides, "unified_lora")
    name = study_name("unified_lora", load_spec("unified_lora"), overrides)
    study = optuna.load_study(study_name=name, storage=open_storage(default_storage(cfg.tracking.uri, 2)))
    ran = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    finished = [t for t in ran if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 == summary["states"]["COMPLETE"] + summary["states"]["PRUNED"]
    assert len({tuple(sorted(t.params.items())) for t in ran}) == len(ran)
    client, exp = _client(experiment)
    runs = client.search_runs([exp], f"tags.study = '{name}'")
    gpu_of = {r.data.tags["trial"]: r.data.tags["gpu"] for r in runs if "trial" in r.data.tags}
    gpus_by_worker = {}
    for trial in ran:
        gpus_by_worker.setdefault(trial.user_attrs["worker"]["pid"], set()).add(gpu_of[str(trial.number)])
    assert all(len(gpus) == 1 for gpus in gpus_by_worker.values())  # a worker keeps its GPU
    held = [gpus.pop() for gpus in gpus_by_worker.values()]
    assert set(held) <= {"0", "1"} and len(set(held)) == len(held)  # and no two workers hold the same


def test_a_sweep_trial_fits_on_one_device(experiment):
    with pytest.raises(ConfigError, match="a sweep trial fits on one device"):
        run_sweep("unified_lora", [*experiment, "train.devices=2"], trials=1)
