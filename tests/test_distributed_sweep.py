"""Two sweep workers on one study through a real PostgreSQL server (Debian's packages)
and an MLflow tracking server backed by it, both on 127.0.0.1, as several machines
would share them. `make sweep-distributed-test` runs this file alone."""

import os
import shutil
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

from research.recipes.sweep import run_sweep

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


def test_two_workers_share_one_study_with_exact_trials_each_with_its_run(experiment, postgres, mlflow_server):
    overrides = [o for o in experiment if not o.startswith("tracking.")] + [
        f"tracking.uri={mlflow_server}",
        "train.max_epochs=1",
        "eval.splits=val",
    ]
    summary = run_sweep("unified_lora", overrides, trials=4, workers=2, storage=f"{postgres}/optuna")

    study = optuna.load_study(study_name=summary["study"], storage=f"{postgres}/optuna")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # exact: no trial lost or run twice
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4, "the two workers drew different trials"

    client = mlflow.tracking.MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name("persona-lab").experiment_id
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    assert sorted(int(c.data.tags["trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.info.run_id for c in children} == {t.user_attrs["run_id"] for t in trials}
    assert all(c.info.status == "FINISHED" for c in children)
