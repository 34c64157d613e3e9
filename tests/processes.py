"""Processes for fault tests: a search in its own session with its own Ray temp dir, and a way to stop
exactly what it started (by session, then by its temp dir in the command line), never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import ROOT


class Search:
    """``python -m tuner.run ARGS`` in its own process session, with Ray's temp dir under ``self.ray_tmp``."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path = ROOT):
        # A short path: Ray's unix sockets live under it and their paths are limited to ~107 bytes.
        self.ray_tmp = tempfile.mkdtemp(prefix="tr", dir="/tmp")
        self.log = Path(self.ray_tmp) / "search.log"
        full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": self.ray_tmp, **(env or {})}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=full_env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return code, self.log.read_text()

    def kill(self) -> None:
        """SIGKILL the driver and every process it started: its session, and anything left (Ray's raylet
        and agents can outlive a killed driver) whose command line names this search's Ray temp dir."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_processes_mentioning(self.ray_tmp)


def kill_processes_mentioning(text: str) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def experiment_exists(uri: str, experiment: str) -> bool:
    """Whether the search has set up its sqlite store and created ``experiment``, read without MLflow: an
    MlflowClient opened on a store another process is still creating runs the schema migrations a second
    time, beside that process's ("table _alembic_tmp_datasets already exists")."""
    path = uri.removeprefix("sqlite:///")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM experiments WHERE name = ?", (experiment,)).fetchone() is not None
    except sqlite3.Error:       # no file yet, or no table yet
        return False


def child_runs(uri: str, experiment: str) -> list:
    if uri.startswith("sqlite:///") and not experiment_exists(uri, experiment):
        return []
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags]


def wait_until(condition, timeout: float = 180, every: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False
