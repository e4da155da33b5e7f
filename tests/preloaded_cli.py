"""`research` commands as processes of their own, without paying for the model stack's import
(torch, Lightning, PEFT, sentence-transformers: 5-15 s a process on 2 cores) each time.

A forkserver imports the CLI and its recipes once; each command runs in a process forked from
it, as `python -m research.cli ARGS` would: its own working directory, stdout and stderr, and
exit status (SystemExit's code; for any other exception 1, with the traceback on stderr).
Nothing has run in the forkserver but imports, so each command starts from a fresh state."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

PRELOAD = [
    "research.cli",
    "research.recipes.train",
    "research.recipes.sweep",
    "research.recipes.serve",
    "research.recipes.analysis",
    "research.recipes.report",
]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def _research(argv: list[str], cwd: str, out: str, err: str) -> None:
    os.chdir(cwd)
    for stream, path in ((1, out), (2, err)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, stream)
        os.close(fd)
    from research.cli import main

    main(argv)


class PreloadedCli:
    def __init__(self, logs: Path) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.logs, self.count = logs, 0

    def __call__(self, *argv: str, cwd: Path, timeout: float = 180) -> Finished:
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        process = self.context.Process(target=_research, args=(list(argv), str(cwd), str(out), str(err)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise TimeoutError(f"research {' '.join(argv)} ran past {timeout} s")
        return Finished(process.exitcode, out.read_text(), err.read_text())
