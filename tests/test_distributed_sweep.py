"""Two sweep workers on one study through a real PostgreSQL server (Debian's packages)
and an MLflow tracking server backed by it, both on 127.0.0.1, as several machines
would share them. `make sweep-distributed-test` runs this file alone."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.distributed
PG_BIN = Path("/usr/lib/postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres():
    versions = sorted(PG_BIN.glob("*/bin/pg_ctl"))
    assert versions, "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
    bin_dir = versions[-1].parent
    home = Path(tempfile.mkdtemp(prefix="persona-lab-pg-"))  # not under pytest's tmp: postgres must reach it
    os.chmod(home, 0o755)
    data = home / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run(_as_postgres(list(cmd)), check=True, capture_output=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    run(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
        "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start",
    )  # fmt: skip
    try:
        for db in ("optuna", "mlflow"):
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
            "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 9)
        server.wait()


def _machine(root: Path, name: str, data_root: Path, base_dir: Path) -> Path:
    """A machine's working directory with its own copies of the data and the base model."""
    home = root / name
    shutil.copytree(data_root, home / "data")
    shutil.copytree(base_dir, home / "models" / "base")
    return home


def _worker(home: Path, spec: Path, storage: str, tracking: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "research.cli", "sweep", "--method", "unified_lora", "--spec", str(spec),
        "--storage", storage, f"tracking.uri={tracking}", "data.dir=data/personas", "base_model=models/base",
        "data.cache_dir=data/cache", "train.batch_size=4", "train.precision=32-true", "eval.max_new_tokens=16",
        "eval.splits=val", "train.max_epochs=4", "train.patience=100",
    ]  # fmt: skip
    log = open(home / "worker.log", "w")  # noqa: SIM115 - the process writes it until it ends
    return subprocess.Popen(command, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_machines_share_one_study_and_a_killed_one_loses_only_its_trial(
    data_root, base_dir, postgres, mlflow_server, tmp_path
):
    """Two worker processes, each in its own directory with its own data and base copies,
    on one PostgreSQL study and one MLflow server. One is SIGKILLed mid-trial; the other
    goes on. The study ends at exactly its trial count; the killed trial is failed (and
    its run FAILED) only once its heartbeat is overdue; the live worker's trials are whole."""
    spec = tmp_path / "spec.yaml"  # continuous lr: two draws are never equal by chance
    spec.write_text(
        "trials: 4\nsampler: {name: random, seed: 0}\npruner: {name: none}\nheartbeat: {interval: 1, grace: 3}\n"
        "space:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
    )
    storage = f"{postgres}/optuna"
    homes = [_machine(tmp_path, name, data_root, base_dir) for name in ("a", "b")]
    # the same command on both (another config would be another study); trials of a few seconds
    doomed, live = (_worker(home, spec, storage, mlflow_server) for home in homes)
    client = mlflow.tracking.MlflowClient(mlflow_server)

    def experiment_id() -> str:  # created by whichever worker starts first
        experiment = client.get_experiment_by_name("persona-lab")
        return experiment.experiment_id if experiment else "-1"

    watcher = optuna.storages.RDBStorage(storage)  # one connection pool while polling, not one per look
    try:
        study, deadline = None, time.time() + 300
        while time.time() < deadline:  # until "a" runs a trial
            if not study:
                names = [s.study_name for s in optuna.get_all_study_summaries(watcher)]
                study = names and optuna.load_study(study_name=names[0], storage=watcher)
            running = study and [
                t
                for t in study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get("worker", {}).get("pid") == doomed.pid
            ]
            # mid-trial: its MLflow run is open (a trial killed before its run exists leaves none)
            if running and client.search_runs(
                [experiment_id()], f"tags.trial = '{running[0].number}' and attributes.status = 'RUNNING'"
            ):
                break
            assert doomed.poll() is None, (homes[0] / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("worker a never started a trial")
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.time()
        (killed,) = running
        assert live.wait(timeout=400) == 0, (homes[1] / "worker.log").read_text()[-3000:]
    finally:
        for process in (doomed, live):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        doomed.wait()

    trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in ran].count(TrialState.COMPLETE) == 4  # exactly the study's count
    (failed,) = [t for t in ran if t.state == TrialState.FAIL]
    assert failed.number == killed.number
    # failed only after its heartbeat went silent for the grace period (less one beat)
    assert failed.datetime_complete.timestamp() >= killed_at + 3 - 1
    assert len({tuple(sorted(t.params.items())) for t in ran}) == len(ran), "no parameter set drawn twice"

    runs = {int(r.data.tags["trial"]): r for r in client.search_runs([experiment_id()], "tags.trial != ''")}
    for trial in ran:
        if trial.state == TrialState.COMPLETE:  # the live worker's: whole and untouched
            assert runs[trial.number].info.status == "FINISHED"
            assert trial.user_attrs["run_id"] == runs[trial.number].info.run_id
            assert trial.user_attrs["worker"]["pid"] == live.pid
    assert runs[killed.number].info.status == "FAILED" and "interrupted" in runs[killed.number].data.tags["error"]
