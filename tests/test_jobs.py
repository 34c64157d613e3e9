"""A search submitted as a Ray Job to a real two-node cluster with its job server: listed, stopped cleanly
mid-search, resumed, every trial once in MLflow. A driver killed mid-search resumes the same way: its runs
adopted as for a local driver (tests/test_resume.py), a FAILED job resumed under the next job id
(tests/test_jobs_inputs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.mlflow_server import MlflowServer, free_port
from tests.processes import child_runs, wait_until
from tests.ray_cluster import AUTH, two_nodes

pytestmark = pytest.mark.slow
SAMPLES = 6
# quickstart's digits (embedded, no data dir) with trials of a few seconds each: a stop finds some trials
# done and others running.
SEARCH = ["--space", "quickstart", "--num-samples", str(SAMPLES), "--max-epochs", "30"]


def tuner(module: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **AUTH})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs")
    dashboard = free_port()
    server = MlflowServer(folder)
    try:
        with two_nodes(folder, "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
                       "--dashboard-port", str(dashboard)):
            server.wait()
            address = f"http://127.0.0.1:{dashboard}"
            assert wait_until(lambda: tuner("tuner.jobs", "list", "--address", address).returncode == 0, 90, every=2)
            yield address, server.uri, folder
    finally:
        server.stop()


def listed_status(address: str, name: str) -> str:
    """The status ``tuner.jobs list`` gives the search's newest job."""
    out = tuner("tuner.jobs", "list", "--address", address).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.split()[:1] == [name]]
    return rows[-1][2] if rows else ""


def status_of(address: str, name: str) -> str:
    """The same, asked of the job server's REST API from this process: the tests poll it every few
    seconds, and a ``tuner.jobs`` process (Ray's imports) each time would take a core from the cluster."""
    request = urllib.request.Request(f"{address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {AUTH['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        jobs = [j for j in json.load(response) if (j.get("metadata") or {}).get("tuner.search") == name]
    jobs.sort(key=lambda j: (j.get("start_time") or 0, j.get("submission_id") or ""))
    return jobs[-1]["status"] if jobs else ""


def submit(cluster, name: str) -> None:
    address, uri, folder = cluster
    done = tuner("tuner.run", *SEARCH, "--name", name, "--submit", address, "--storage-path", str(folder / "rr"),
                 "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"submitted search {name}" in done.stdout
    assert wait_until(lambda: status_of(address, name) == "RUNNING", 60, every=2)


def some_done_some_running(uri: str, name: str):
    def check():
        runs = [r for r in child_runs(uri, "quickstart") if r.data.tags.get("tuner.trial_id")]
        mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents(uri, name)]
        finished = sum(r.info.status == "FINISHED" for r in mine)
        # Three trials or more still to finish: the stop (seconds to arrive) must find the search mid-way,
        # not in its wrap-up after the last trial.
        return 2 <= finished <= SAMPLES - 3 and any(r.info.status == "RUNNING" for r in mine)
    return check


def parents(uri: str, name: str) -> set[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`tuner.search` = '{name}'") if exp else []
    return {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}


def search_run(uri: str, name: str):
    (run_id,) = parents(uri, name)
    return MlflowClient(uri).get_run(run_id)


def resume_to_the_end(cluster, name: str) -> None:
    """Resume, run to success, and find every trial exactly once, finished, in MLflow."""
    address, uri, _ = cluster
    done = tuner("tuner.jobs", "resume", name, "--address", address)
    assert done.returncode == 0 and f"as Ray job {name}-r1" in done.stdout, done.stderr
    running = tuner("tuner.jobs", "resume", name, "--address", address)
    assert running.returncode == 2 and running.stderr.startswith(f"error: search {name} is running (job {name}-r1)")
    assert wait_until(lambda: status_of(address, name) in ("SUCCEEDED", "FAILED"), 300, every=3)
    logs = tuner("tuner.jobs", "logs", name, "--address", address).stdout
    assert listed_status(address, name) == "SUCCEEDED", logs[-3000:]
    runs = [r for r in child_runs(uri, "quickstart") if r.data.tags.get("mlflow.parentRunId") in parents(uri, name)]
    counts = Counter(r.data.tags["tuner.trial_id"] for r in runs)
    assert max(counts.values()) == 1                                  # no trial twice
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == SAMPLES
    assert len(runs) == SAMPLES                                       # a stopped search saved every trial
    assert search_run(uri, name).info.status == "FINISHED"


def test_a_submitted_search_is_listed_stopped_and_resumed(cluster):
    address, uri, _ = cluster
    submit(cluster, "j1")
    assert wait_until(some_done_some_running(uri, "j1"), 240, every=2), \
        tuner("tuner.jobs", "logs", "j1", "--address", address).stdout[-3000:]
    stop = tuner("tuner.jobs", "stop", "j1", "--address", address)
    assert stop.returncode == 0, stop.stderr
    assert "search j1 stopped" in stop.stdout
    assert status_of(address, "j1") == "STOPPED" and listed_status(address, "j1") == "STOPPED"
    assert "stopped: search j1 is saved" in tuner("tuner.jobs", "logs", "j1", "--address", address).stdout
    runs = [r for r in child_runs(uri, "quickstart") if r.data.tags.get("mlflow.parentRunId") in parents(uri, "j1")]
    assert "RUNNING" not in {r.info.status for r in runs} and "KILLED" in {r.info.status for r in runs}
    assert search_run(uri, "j1").info.status == "KILLED"

    again = tuner("tuner.jobs", "stop", "j1", "--address", address)
    assert again.returncode == 2 and again.stderr.strip() == "error: search j1 is not running: its job j1 is STOPPED"
    resume_to_the_end(cluster, "j1")

