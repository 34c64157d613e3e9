"""MLflow tracking against a real tracking server and the embedded sqlite store: nested runs, per-epoch
metrics, the champion model, one-line errors, and a server that goes away mid-search."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_cli
from tests.mlflow_server import MlflowServer
from tuner.bundle import load_registered
from tuner.data import load_part

BUDGET = ["--num-samples", "6", "--max-epochs", "6"]   # a quickstart search, on a smaller budget


def datasets_of(run) -> dict[str, tuple[str, str]]:
    """context (train, validation, test) -> (dataset name, digest) of a run's dataset inputs."""
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): (i.dataset.name, i.dataset.digest)
            for i in run.inputs.dataset_inputs}


def check_search(uri: str, storage, name: str, experiment: str = "quickstart"):
    """The checks asked of any store: one parent, a nested child per trial, steps = epochs, the data
    of each in the Dataset column, and a registered champion that reproduces its logged test accuracy."""
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
    splits = datasets_of(parent)
    assert set(splits) == {"train", "validation", "test"} and {n for n, _ in splits.values()} == {"digits"}
    assert all(datasets_of(child) == {k: splits[k] for k in ("train", "validation")} for child in children)
    for child in children:
        epochs = int(board.loc[board["trial_id"] == child.data.tags["tuner.trial_id"], "epochs"].iloc[0])
        for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
            assert sorted(steps) == list(range(1, epochs + 1)), (metric, steps, epochs)
        assert child.data.tags["tuner.end_reason"] and child.info.status == "FINISHED"
    return client, parent


def check_champion(uri: str, client: MlflowClient, parent):
    # tuner's own loading: weights and settings, rebuilt; the store named explicitly, nothing unpickled
    model, settings, version = load_registered(client, "models:/quickstart@champion")
    test = load_part("digits", None, "test")
    x = torch.from_numpy(test.images.astype(np.float32) / 255.0)
    with torch.no_grad():
        logits = model(x)
    accuracy = (logits.argmax(1).numpy() == test.labels).mean()
    assert accuracy == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-9)
    assert accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-9)
    assert version.tags["test_images"] == "360" and len(version.tags["test_digest"]) == 32
    assert settings["config"]["model"] == "convnet" and settings["classes"] == [str(i) for i in range(10)]
    # The serving flavour (pt2) takes any batch size, not just the example's two, and agrees with it.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)      # models:/ resolves through the process-wide registry URI
    pyfunc = mlflow.pyfunc.load_model("models:/quickstart@champion")
    served = np.asarray(pyfunc.predict(test.images[:5].astype(np.float32) / 255.0))
    assert served.shape == (5, 10) and np.allclose(served, logits[:5].numpy(), atol=1e-5)
    best_run = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`tuner.trial_id` = '{version.tags['trial_id']}'")[0]
    assert best_run.data.metrics["test_accuracy"] == pytest.approx(accuracy)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).wait()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_search_against_a_tracking_server(server, tmp_path):
    # Credentials in the URI (the server ignores them) must not reach the records or the printout.
    secret_uri = server.uri.replace("http://", "http://tuner:s3cret-pw@")
    code, out, err = run_cli("--space", "quickstart", "--name", "srv", "--storage-path", str(tmp_path / "rr"),
                             "--tracking-uri", secret_uri, "--log-top-k", "2", *BUDGET, cwd=tmp_path)
    assert code == 0, err[-3000:]
    client, parent = check_search(server.uri, tmp_path / "rr", "srv")
    check_champion(server.uri, client, parent)
    versions = client.search_model_versions("name = 'quickstart'")
    assert sorted(v.tags["rank"] for v in versions) == ["1", "2"]
    assert "tracking-uri http://***@127.0.0.1" in parent.data.tags["tuner.command"]
    recorded = [json.dumps(parent.data.tags), json.dumps(parent.data.params), out, err,
                (tmp_path / "rr" / "srv" / "search_settings.json").read_text(),
                Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="search_settings.json",
                                                         tracking_uri=server.uri)).read_text()]
    assert not [line for text in recorded for line in text.splitlines() if "s3cret-pw" in line]
    assert not [f for f in (tmp_path / "rr").rglob("*") if f.is_file() and b"s3cret-pw" in f.read_bytes()]
    assert "pickle" not in err.lower()                         # MLflow's pickle warning is gone


@pytest.mark.slow
def test_search_against_the_embedded_store(quickstart):
    code, tmp, _ = quickstart
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, parent = check_search(uri, tmp / "ray_results", "qs")
    check_champion(uri, client, parent)
    best = client.get_model_version_by_alias("quickstart", "champion")
    run = client.get_run(best.run_id)
    assert run.info.end_time < best.creation_timestamp     # logging the model, later, kept the trial's end time


@pytest.mark.slow
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
    assert lines[0].startswith("error: MLflow tracking server") and "unreachable (ConnectionError)" in lines[0]
    assert not (tmp_path / "mlflow").exists() and not list(tmp_path.iterdir())   # nothing was started or written


def test_a_database_uri_with_its_driver_is_tried_not_refused_for_its_scheme(tmp_path):
    # MLflow's documented form: mysql+pymysql://, postgresql+psycopg2://. Nothing listens here: it cannot be used.
    code, out, err = run_cli("--space", "quickstart", "--tracking-uri", "mysql+pymysql://u@127.0.0.1:9/db",
                             "--storage-path", str(tmp_path), cwd=tmp_path)
    assert code == 2 and "unsupported scheme" not in err and "cannot be used" in err, err


def test_the_health_check_asks_as_mlflows_client_does(monkeypatch):
    """A server behind a token (MLFLOW_TRACKING_TOKEN) answers the health check as it answers the client."""
    import http.server
    import threading

    from tuner.store import server_health

    class TokenOnly(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == "Bearer s3cret" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), TokenOnly)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_port}"
    try:
        assert server_health(uri, uri).status_code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        assert server_health(uri, uri).status_code == 200
    finally:
        httpd.shutdown()


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


@pytest.mark.slow
def test_a_server_that_goes_away_does_not_kill_the_search(tmp_path):
    srv = MlflowServer(tmp_path).wait()
    cmd = [sys.executable, "-m", "tuner.run", "--space", "quickstart", "--name", "gone", "--storage-path",
           str(tmp_path / "rr"), "--tracking-uri", srv.uri, "--num-samples", "6", "--max-epochs", "12"]
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
    assert "not in MLflow:" in out and "Leaderboard: quickstart (6 trials" in out
    assert pd.read_csv(tmp_path / "rr" / "gone" / "leaderboard.csv").shape[0] == 6
