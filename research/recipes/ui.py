"""`research ui`: the MLflow UI on the project's store, opened where a researcher starts (the
runs table with the study's metric columns); `research ui --check`: the same pages in
headless Chromium, screenshotted, failing on an error page or a page without the runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow

from research.config import TrackingConfig
from research.tracking.runs import compare_url, experiment_id, runs_table_url

# what MLflow's UI shows when a page failed (its error boundary, a bad view key, a missing run)
ERROR_TEXTS = ("Something went wrong", "Error loading", "does not exist", "Page not found")


class UiCheckError(RuntimeError):
    pass


def _server_command(tracking: TrackingConfig, port: int) -> list[str]:
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    return [mlflow_bin, "server", "--backend-store-uri", tracking.uri, "--host", "127.0.0.1", "--port", str(port)]


def serve(tracking: TrackingConfig, port: int) -> None:
    """Print where to look, then become the MLflow UI (one worker) in the foreground."""
    host = f"http://127.0.0.1:{port}"
    print(f"runs table (the study's metric columns): {runs_table_url(host, experiment_id(tracking))}", flush=True)
    command = [*_server_command(tracking, port), "--workers", "1"]
    os.execv(command[0], command)


@contextmanager
def _running_server(tracking: TrackingConfig, port: int, log: Path):
    with log.open("w") as out:
        server = subprocess.Popen(_server_command(tracking, port), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise UiCheckError(f"the MLflow UI exited with code {server.returncode}; its log: {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise UiCheckError(f"the MLflow UI did not answer on 127.0.0.1:{port} within 90 s; its log: {log}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise UiCheckError("no Chromium found: install Debian's package (apt-get install chromium)")


def _open(url: str, screenshot: Path, height: int) -> str:
    """Render `url` in headless Chromium: save a screenshot, return the rendered DOM."""
    flags = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size=2200,{height}",
        "--virtual-time-budget=20000",  # let the single-page app fetch and render
    ]
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


def _two_methods(experiment: str) -> list:
    """The latest finished run of each of the two most recently run methods (a method's own
    top-level runs: not sweeps, seeds parents, the instrument, or a parent's children, which
    the runs table folds away)."""
    runs = mlflow.search_runs([experiment], "attributes.status = 'FINISHED'", output_format="list")
    latest: dict[str, object] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        if (
            "method" in run.data.tags
            and not {"aggregate", "instrument", "sweep", "mlflow.parentRunId"} & run.data.tags.keys()
        ):
            latest.setdefault(run.data.tags["method"], run)
    if len(latest) < 2:
        raise UiCheckError(
            f"experiment {experiment} has finished runs of {len(latest)} method(s); the check compares two "
            "(run `make run` first)"
        )
    return list(latest.values())[:2]


def check(tracking: TrackingConfig, port: int, out: Path) -> list[Path]:
    """Open the runs table and a comparison of two methods; the screenshots' paths."""
    experiment = experiment_id(tracking)
    runs = _two_methods(experiment)
    out.mkdir(parents=True, exist_ok=True)
    names = [run.info.run_name for run in runs]
    if not runs[0].inputs.dataset_inputs:
        raise UiCheckError(f"run {runs[0].info.run_id} has no dataset input (made before datasets were logged)")
    # page -> (its URL, window height: the comparison's metrics sit below its plots, text it must show)
    pages = {
        "runs_table": (
            lambda host: runs_table_url(host, experiment),
            1100,
            [*names, "test/param_f1", runs[0].inputs.dataset_inputs[0].dataset.name],
        ),
        "compare": (
            lambda host: compare_url(host, experiment, [r.info.run_id for r in runs]),
            3000,
            [*names, "test/param_f1"],
        ),
    }
    shots = []
    with _running_server(tracking, port, out / "mlflow-ui.log") as host:
        for page, (url, height, expected) in pages.items():
            shot = out / f"{page}.png"
            dom = _open(url(host), shot, height)
            if errors := [text for text in ERROR_TEXTS if text in dom]:
                raise UiCheckError(f"{page} ({url(host)}) shows an error: {errors[0]!r}; screenshot {shot}")
            if missing := [text for text in expected if text not in dom]:
                raise UiCheckError(f"{page} ({url(host)}) does not show {missing}; screenshot {shot}")
            shots.append(shot)
    return shots
