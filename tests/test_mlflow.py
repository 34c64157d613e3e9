"""MLflow tracking against a real tracking server and the embedded sqlite store: nested runs, per-epoch
metrics, the champion model, one-line errors, and a server that goes away mid-search."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_cli
from tests.mlflow_server import MlflowServer
from tuner.data import load_part
from tuner.run import main

pytestmark = pytest.mark.slow
BUDGET = ["--num-samples", "6", "--max-epochs", "6"]   # a quickstart search, on a smaller budget


def check_search(uri: str, storage, name: str, experiment: str = "quickstart"):
    """The checks the issue asks of any store: one parent, a nested child per trial, steps = epochs, and a
    registered champion that reproduces its logged test accuracy."""
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`tuner.search` = '{name}'")
    (parent,) = runs
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    board = pd.read_csv(storage / name / "leaderboard.csv")
    assert len(children) == len(board) and parent.info.status == "FINISHED"
    assert parent.data.tags["tuner.space"] == "quickstart" and parent.data.tags["tuner.storage"] == str(storage)
    assert "tuner.command" in parent.data.tags and parent.data.params["searcher"].startswith("OptunaSearch")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "learning_curves.png", "quickstart.yaml", "search_settings.json"} <= artifacts
    for child in children:
        epochs = int(board.loc[board["trial_id"] == child.data.tags["tuner.trial_id"], "epochs"].iloc[0])
        for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
            assert sorted(steps) == list(range(1, epochs + 1)), (metric, steps, epochs)
        assert child.data.tags["tuner.end_reason"] and child.info.status == "FINISHED"
    return client, parent


def check_champion(uri: str, client: MlflowClient, parent):
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)      # models:/ resolves through the process-wide registry URI
    model = mlflow.pytorch.load_model("models:/quickstart@champion")
    version = client.get_model_version_by_alias("quickstart", "champion")
    test = load_part("digits", None, "test")
    x = torch.from_numpy(test.images.astype(np.float32) / 255.0)
    with torch.no_grad():
        accuracy = (model(x).argmax(1).numpy() == test.labels).mean()
    assert accuracy == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-9)
    assert accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-9)
    # The signature takes any batch size, not just the example's.
    pyfunc = mlflow.pyfunc.load_model("models:/quickstart@champion")
    assert pyfunc.predict(test.images[:5].astype(np.float32) / 255.0).shape == (5, 10)
    best_run = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`tuner.trial_id` = '{version.tags['trial_id']}'")[0]
    assert best_run.data.metrics["test_accuracy"] == pytest.approx(accuracy)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).wait()
    yield srv
    srv.stop()


def test_search_against_a_tracking_server(ray_session, server, tmp_path):
    assert main(["--space", "quickstart", "--name", "srv", "--storage-path", str(tmp_path), "--tracking-uri",
                 server.uri, "--log-top-k", "2", *BUDGET]) == 0
    client, parent = check_search(server.uri, tmp_path, "srv")
    check_champion(server.uri, client, parent)
    versions = client.search_model_versions("name = 'quickstart'")
    assert sorted(v.tags["rank"] for v in versions) == ["1", "2"]


def test_search_against_the_embedded_store(quickstart):
    code, tmp, _ = quickstart
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, parent = check_search(uri, tmp / "ray_results", "qs")
    check_champion(uri, client, parent)
    best = client.get_model_version_by_alias("quickstart", "champion")
    run = client.get_run(best.run_id)
    assert run.info.end_time - run.info.start_time < 60_000   # logging the model kept the trial's end time


def test_screenshot_of_the_runs_shows_trials_nested_under_the_search(quickstart, tmp_path):
    _, tmp, _ = quickstart
    out = tmp_path / "runs.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "mlflow_screenshot.py"), "--store",
                           f"sqlite:///{tmp / 'mlflow.db'}", "--out", str(out)], capture_output=True, text=True,
                          timeout=240)
    if proc.stdout.startswith("skip:"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0 and "shown nested" in proc.stdout, proc.stdout + proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "https://127.0.0.1:9/mlflow"])
def test_an_unreachable_tracking_uri_exits_2_with_one_line_before_ray_starts(tmp_path, uri):
    code, out, err = run_cli("--space", "quickstart", "--tracking-uri", uri, "--storage-path", str(tmp_path),
                             cwd=tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: MLflow tracking server") and "unreachable" in lines[0]
    assert not (tmp_path / "mlflow").exists() and not list(tmp_path.iterdir())   # nothing was started or written


def test_a_server_that_is_not_mlflow_is_one_line(tmp_path):
    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code, _, err = run_cli("--space", "quickstart", "--tracking-uri", f"http://127.0.0.1:{httpd.server_port}",
                               cwd=tmp_path)
    finally:
        httpd.shutdown()
    assert code == 2 and err.strip().startswith("error: ") and "is it an MLflow tracking server" in err


def test_a_server_that_goes_away_does_not_kill_the_search(tmp_path):
    srv = MlflowServer(tmp_path).wait()
    cmd = [sys.executable, "-m", "tuner.run", "--space", "quickstart", "--name", "gone", "--storage-path",
           str(tmp_path / "rr"), "--tracking-uri", srv.uri, "--num-samples", "8", "--max-epochs", "20"]
    search = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = MlflowClient(srv.uri, registry_uri=srv.uri)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:   # until the first trials have logged some epochs
            exp = client.get_experiment_by_name("quickstart")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if sum("mlflow.parentRunId" in r.data.tags for r in runs) >= 2:
                break
            time.sleep(0.5)
        srv.stop()
        with pytest.raises(requests.RequestException):
            requests.get(srv.uri + "/health", timeout=2)
        out, _ = search.communicate(timeout=300)
    finally:
        search.kill()
        srv.stop()
    assert search.returncode == 0, out[-3000:]
    assert "not in MLflow:" in out and "Leaderboard: quickstart (8 trials" in out
    assert pd.read_csv(tmp_path / "rr" / "gone" / "leaderboard.csv").shape[0] == 8
