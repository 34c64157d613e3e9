"""Shared fixtures: one Ray instance per test session, the local datasets, and a way to run the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
STARTS_RAY = {"ray_session", "quickstart"}   # fixtures that start Ray (seconds) or run a whole search


def pytest_collection_modifyitems(items):
    """A test that starts Ray is slow however it is marked: ``-m "not slow"`` stays the fast tier."""
    for item in items:
        if STARTS_RAY & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$TUNER_DATA_DIR, else ../shared/data beside the project; tests that need it skip without it."""
    path = Path(os.environ.get("TUNER_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
    if not (path / "MNIST").is_dir():
        pytest.skip(f"no local datasets at {path} (set TUNER_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session: ray.init costs seconds, so tests share one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """``python -m tuner.run ARGS`` in a subprocess: (exit code, stdout, stderr)."""
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
    return proc.returncode, proc.stdout, proc.stderr


def search_args(tmp_path: Path, *args: str) -> list[str]:
    """CLI arguments that keep a search's Ray results and MLflow store inside ``tmp_path``."""
    return ["--storage-path", str(tmp_path / "ray_results"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args]


@pytest.fixture(scope="session")
def quickstart(ray_session, tmp_path_factory):
    """One full quickstart search into the embedded sqlite store: (exit code, folder, leaderboard)."""
    import pandas as pd

    from tuner.run import main

    tmp = tmp_path_factory.mktemp("quickstart")
    code = main(search_args(tmp, "--space", "quickstart", "--name", "qs"))
    return code, tmp, pd.read_csv(tmp / "ray_results" / "qs" / "leaderboard.csv")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, shot: Path, height: int) -> Path:
    """A 1280-wide screenshot of the local HTML ``page`` by headless Chromium (tests skip without it)."""
    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", f"--window-size=1280,{height}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return shot
