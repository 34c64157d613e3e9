"""Trust boundaries outside the model store: names, credentials, one driver per search, Ray's token file,
and a data folder whose pickles try to run code."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tuner.cluster import secure_ray_token
from tuner.data import load_part
from tuner.errors import UserError
from tuner.guards import DriverLock, check_name, redact, redact_all, unique_name
from tuner.run import main


# ---- names -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["quickstart", "cifar_depth-20261123-101500-ab12", "a", "v1.2", "A-b_c.d"])
def test_names_that_are_allowed(name):
    assert check_name("--name", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/p", "a/b", "a b", "a'b", 'a"b', ".hidden", "-x",
                                  "x" * 129, "a\nb", "é"])
def test_names_that_are_refused_in_one_line(name):
    with pytest.raises(UserError, match="is not allowed: use 1 to 128 letters") as err:
        check_name("--name", name)
    assert "\n" not in str(err.value).replace(repr(name), "")


def test_default_names_differ_within_one_second():
    names = {unique_name("quickstart") for _ in range(50)}
    assert len(names) > 45 and all(n.startswith("quickstart-") and check_name("--name", n) for n in names)


# ---- credentials -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,secret", [
    ("postgresql://mlflow:hunter2@db.internal:5432/mlflow", "hunter2"),
    ("mysql+pymysql://root:pw0rd@10.0.0.5/mlflow", "pw0rd"),
    ("https://ghp_abcdef123@mlflow.example.com", "ghp_abcdef123"),
    ("http://mlflow.example.com:5000/?token=tok123&exp=1", "tok123"),
    ("s3://bucket/tuner?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA1", "deadbeef"),
    ("https://host/api?access_key=k3y&Password=p4ss", "p4ss"),
    ("python -m tuner.run --tracking-uri=postgresql://u:sekrit@h/db --name x", "sekrit"),
])
def test_redact_takes_credentials_out(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out
    assert redact(out) == out                      # idempotent: a redacted URI stays as it is


@pytest.mark.parametrize("text", ["sqlite:////home/me/mlflow/mlflow.db", "http://10.0.0.5:5000",
                                  "/data/user@site/ray_results", "models:/cifar_lrn@champion", "s3://bucket/tuner"])
def test_redact_leaves_uris_without_credentials_alone(text):
    assert redact(text) == text


def test_redact_all_reaches_nested_settings():
    settings = {"storage_path": "s3://k:s@b/p", "fixed": {"pretrained": "none"}, "n": 3, "l": ["http://u:p@h"]}
    assert redact_all(settings) == {"storage_path": "s3://***@b/p", "fixed": {"pretrained": "none"}, "n": 3,
                                    "l": ["http://***@h"]}


# ---- one driver per search -------------------------------------------------------------------------------

HOLD = """import sys, time
from pathlib import Path
from tuner.guards import DriverLock
with DriverLock(Path(sys.argv[1]), "s"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def other_driver(tmp_path):
    """Another process holding the lock of search ``s`` under ``tmp_path/rr``."""
    (tmp_path / "rr").mkdir(mode=0o755)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "rr" / ".s.lock")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("resume", [False, True], ids=["start", "resume"])
def test_a_second_driver_on_one_search_is_refused_naming_the_first(tmp_path, monkeypatch, capsys, other_driver,
                                                                   resume):
    monkeypatch.chdir(tmp_path)
    args = ["--space", "quickstart", "--name", "s", "--storage-path", str(tmp_path / "rr"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}", *(["--resume"] if resume else [])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: search s is being run by another driver") and \
        f"pid {other_driver.pid} on" in err[0], err
    assert not (tmp_path / "mlflow.db").exists() and sorted(p.name for p in (tmp_path / "rr").iterdir()) == [".s.lock"]


def test_the_lock_is_free_again_when_its_driver_ends(tmp_path):
    path = tmp_path / ".s.lock"
    with DriverLock(path, "s"):
        with pytest.raises(UserError, match=f"pid {os.getpid()} on"):
            DriverLock(path, "s").__enter__()
    with DriverLock(path, "s"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()                       # a driver that ends removes its lock file


# ---- Ray's token file ------------------------------------------------------------------------------------

def test_ray_writes_its_token_readable_by_all_and_the_documented_umask_keeps_it_private(tmp_path):
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN", None)
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, check=True, timeout=60)
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) & 0o044          # Ray's own: readable by group and others
    token.unlink()
    subprocess.run(["bash", "-c", f"(umask 077; {ray} get-auth-token --generate)"], env=env, capture_output=True,
                   check=True, timeout=60)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_a_local_ray_gets_a_private_token_and_a_readable_one_is_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    secure_ray_token(starting=True)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    secure_ray_token(starting=False)
    assert capsys.readouterr().err == ""
    token.chmod(0o644)
    secure_ray_token(starting=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: Ray's token file") and "chmod 600" in err[0]


# ---- a data folder that tries to run code ----------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command: what a hostile data folder would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [Payload, WritesAFile])
def test_a_cifar_batch_that_would_run_code_is_one_line_and_runs_nothing(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 0, 1], b"extra": payload(marker)}
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError) as err:
        load_part("cifar10", tmp_path, "train")
    message = str(err.value)
    assert "data_batch_1 is not a CIFAR batch" in message and "which a CIFAR batch never holds" in message
    assert "\n" not in message and not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_the_real_cifar_subset_still_loads_and_a_batch_of_numpy_arrays_too(tmp_path, data_dir, protocol):
    subset = load_part("cifar10", data_dir / "cifar-10-subset", "test")
    assert subset.images.dtype == np.uint8 and len(subset) > 0 and subset.classes[0] == "airplane"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):       # written the way Python 3 and numpy write them today
        (folder / name).write_bytes(pickle.dumps({"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 7,
                                                  "labels": np.array([3, 1])}, protocol=protocol))
    part = load_part("cifar10", tmp_path, "train")
    assert part.images.shape == (2, 3, 32, 32) and list(part.labels) == [3, 1]


def test_a_truncated_cifar_batch_is_one_line(tmp_path, data_dir):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-subset" / "cifar-10-batches-py", folder)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:1000])
    with pytest.raises(UserError, match="test_batch is not a CIFAR batch") as err:
        load_part("cifar10", tmp_path, "test")
    assert "\n" not in str(err.value)



def test_a_resumed_search_asks_again_for_the_credentials_it_did_not_store(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from tuner.driver import SETTINGS_FILE, tracking_uri_for
    from tuner.search import SearchOptions

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    opts = SearchOptions("s", str(tmp_path), 1, 1, 1, 0)
    (opts.outcome_dir / SETTINGS_FILE).write_text(json.dumps({"tracking_uri": "http://***@h:5000"}))
    full = "http://u:pw@h:5000"
    assert tracking_uri_for(SimpleNamespace(tracking_uri=full, resume=True), opts) == full
    with pytest.raises(UserError, match=r"logs to http://\*\*\*@h:5000, whose credentials are not stored"):
        tracking_uri_for(SimpleNamespace(tracking_uri=None, resume=True), opts)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", full)
    assert tracking_uri_for(SimpleNamespace(tracking_uri=None, resume=True), opts) == full
    with pytest.raises(UserError, match="resume it with that --tracking-uri or without one"):
        tracking_uri_for(SimpleNamespace(tracking_uri="http://other:5000", resume=True), opts)
