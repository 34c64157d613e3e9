"""--submit and tuner.jobs without a cluster: what is refused (one line, exit 2, nothing submitted), the
job's command and metadata, and how a signal stops a search."""

from __future__ import annotations

import os
import shlex
import signal
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuner import jobs, submit
from tuner.run import main, parse_args
from tuner.stopping import GracefulStop


class FakeClient:
    """Ray's JobSubmissionClient, as far as tuner uses it, over a list of jobs."""

    def __init__(self, jobs_=(), check="SUCCEEDED"):
        self.jobs, self.submitted, self.stopped, self.check = list(jobs_), [], [], check

    def list_jobs(self):
        return self.jobs

    def submit_job(self, **kw):
        self.submitted.append(kw)
        return kw["submission_id"]

    def get_job_status(self, job_id):
        return SimpleNamespace(value=self.check)

    def get_job_logs(self, job_id):
        return "Running entrypoint\nerror: MLflow tracking server http://x:5000 is unreachable\n"

    def get_job_info(self, job_id):
        return SimpleNamespace(message="")

    def delete_job(self, job_id):
        pass

    def stop_job(self, job_id):
        self.stopped.append(job_id)


def job(name, sid, status, entrypoint="python -m tuner.run --space job_space/quickstart.yaml --name n", start=1):
    meta = {"tuner.search": name, "tuner.space_file": "quickstart.yaml", "tuner.space_yaml": "x: 1\n"}
    return SimpleNamespace(metadata=meta, submission_id=sid, job_id=None, status=SimpleNamespace(value=status),
                           start_time=start, end_time=None, entrypoint=entrypoint)


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(submit, "job_client", lambda address: client)
    return client


GOOD = ["--space", "quickstart", "--submit", "http://head:8265", "--storage-path", "/shared/rr",
        "--tracking-uri", "http://mlflow:5000"]


@pytest.mark.parametrize("args, says", [
    (["--storage-path", "rr"], "--storage-path rr is not an absolute path"),
    (["--storage-path", "~/rr"], "--storage-path ~/rr is not an absolute path"),
    (["--data-dir", "data"], "--data-dir data is not an absolute path: a submitted search runs in a temporary"),
    (["--tracking-uri", "sqlite:///mlflow.db"], "the tracking store sqlite:///mlflow.db is a file"),
    (["--tracking-uri", "/tmp/mlruns"], "the tracking store /tmp/mlruns is a file"),
    (["--resume", "--name", "x"], "--submit starts a search"),
    (["--address", "auto"], "--submit runs the driver on the cluster and --address runs it here"),
    (["--num-samples", "0"], "--num-samples 0 is out of range"),
    (["--name", "../x"], "--name '../x' is not allowed"),
])
def test_a_refused_submission_is_one_line_and_submits_nothing(fake, capsys, args, says):
    values = dict(zip(GOOD[::2], GOOD[1::2]))
    given = [a for k, v in values.items() if k not in args for a in (k, v)] + args
    assert main(given) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err
    assert fake.submitted == []


def test_no_tracking_server_is_refused(fake, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(GOOD[:6]) == 2
    assert "needs a tracking server the cluster reaches" in capsys.readouterr().err and not fake.submitted


def test_an_unreachable_job_server_is_one_line(capsys):
    bad = GOOD[:3] + ["http://127.0.0.1:9"] + GOOD[4:]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Ray job server at http://127.0.0.1:9 cannot be used") and err.count("\n") == 1


def test_a_job_server_address_without_its_scheme_is_one_line_at_once(capsys):
    assert main(GOOD[:3] + ["127.0.0.1:1"] + GOOD[4:]) == 2         # a GCS address, as $RAY_ADDRESS often is
    assert capsys.readouterr().err == ("error: 127.0.0.1:1 is not a Ray job server's address; give the head's "
                                       "dashboard, http://HOST:8265\n")


def test_a_failed_check_on_the_cluster_is_its_error_line(capsys, monkeypatch):
    client = FakeClient(check="FAILED")
    monkeypatch.setattr(submit, "job_client", lambda address: client)
    assert main(GOOD) == 2
    assert capsys.readouterr().err == "error: on the cluster: MLflow tracking server http://x:5000 is unreachable\n"
    assert [list(s["metadata"]) for s in client.submitted] == [["tuner.check"]]    # the check job only


def test_a_name_submitted_already_is_refused(capsys, monkeypatch):
    client = FakeClient([job("taken", "taken", "STOPPED")])
    monkeypatch.setattr(submit, "job_client", lambda address: client)
    assert main([*GOOD, "--name", "taken"]) == 2
    assert "python -m tuner.jobs resume taken" in capsys.readouterr().err and not client.submitted


def test_the_job_runs_the_search_with_the_flags_given_and_records_it(fake, capsys):
    flags = ["--num-samples", "3", "--set", "lr=0.01", "--set", "depth=2", "--gpus-per-trial", "0.25", "--grid"]
    assert main([*GOOD, "--name", "s1", *flags, "--tracking-uri", "http://mlflow:5000"]) == 0
    check, search = fake.submitted
    assert search["submission_id"] == "s1" and "submitted search s1" in capsys.readouterr().out
    argv = shlex.split(search["entrypoint"])
    assert argv[:7] == ["python", "-m", "tuner.run", "--space", "job_space/quickstart.yaml", "--name", "s1"]
    again = parse_args(argv[3:])
    assert (again.num_samples, again.overrides, again.gpus_per_trial, again.grid) == (3, ["lr=0.01", "depth=2"], 0.25,
                                                                                       True)
    assert again.storage_path == "/shared/rr" and again.submit is None
    meta = search["metadata"]
    assert meta["tuner.search"] == "s1" and meta["tuner.tracking_uri"] == "http://mlflow:5000"
    assert meta["tuner.metric"] == "val_accuracy"
    assert search["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == str(submit.STOP_WAIT_SECONDS)
    # every job its own working directory: Ray deletes a shared one when the first job using it ends
    assert check["runtime_env"]["env_vars"] == search["runtime_env"]["env_vars"]
    assert check["runtime_env"]["working_dir"] != search["runtime_env"]["working_dir"]


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_credentials_in_the_tracking_uri_are_refused_not_sent_to_the_job_table(fake, monkeypatch, capsys, where):
    uri = "http://user:secret@mlflow:5000"
    if where == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main([*GOOD[:6], "--name", "s3", *(["--tracking-uri", uri] if where == "flag" else [])]) == 2
    err = capsys.readouterr().err
    assert "holds credentials" in err and "MLFLOW_TRACKING_USERNAME" in err and "secret" not in err
    assert not fake.submitted


def test_a_tracking_uri_from_the_environment_goes_with_the_job(fake, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-from-env:5000")
    assert main([*GOOD[:6], "--name", "s2"]) == 0          # no --tracking-uri: the environment's
    check, search = fake.submitted
    assert parse_args(shlex.split(search["entrypoint"])[3:]).tracking_uri == "http://mlflow-from-env:5000"
    assert search["metadata"]["tuner.tracking_uri"] == "http://mlflow-from-env:5000"


def test_the_working_dir_holds_the_space_and_this_checkout(tmp_path):
    with submit.runtime_env("mine.yaml", "a: 1\n", "s1-r1") as env:
        folder = env["working_dir"]
        assert open(os.path.join(folder, "job_space", "mine.yaml")).read() == "a: 1\n"
        assert open(os.path.join(folder, "job_space", "job_id")).read() == "s1-r1"   # its own package hash
        assert os.path.isfile(os.path.join(folder, "tuner", "run.py"))
        assert not any("__pycache__" in d for d, _, _ in os.walk(folder))
    assert not os.path.exists(folder)


def test_resume_refuses_a_running_or_finished_search_and_numbers_its_jobs(monkeypatch, capsys):
    client = FakeClient([job("a", "a", "STOPPED"), job("a", "a-r1", "FAILED", start=2), job("b", "b", "RUNNING"),
                         job("c", "c", "SUCCEEDED")])
    monkeypatch.setattr(submit, "job_client", lambda address: client)
    assert jobs.main(["resume", "b", "--address", "http://h:8265"]) == 2
    assert capsys.readouterr().err.startswith("error: search b is running (job b)")
    assert jobs.main(["resume", "c", "--address", "http://h:8265"]) == 2
    assert "has finished" in capsys.readouterr().err
    assert jobs.main(["resume", "nope", "--address", "http://h:8265"]) == 2
    assert jobs.main(["resume", "a", "--address", "http://h:8265"]) == 0
    (new,) = client.submitted
    assert new["submission_id"] == "a-r2" and new["entrypoint"].endswith("--name n --resume")
    assert jobs.main(["stop", "a", "--address", "http://h:8265"]) == 2
    assert "error: search a is not running: its job a-r1 is FAILED" in capsys.readouterr().err
    assert client.stopped == []


def test_a_signal_while_searching_is_tunes_graceful_stop_and_a_second_one_stops_at_once():
    called, before = [], signal.getsignal(signal.SIGTERM)
    old = signal.signal(signal.SIGUSR1, lambda *a: called.append(a[0]))   # stands in for Tune's handler
    try:
        with GracefulStop() as stop, stop.searching():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and called == [signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt), GracefulStop():
            os.kill(os.getpid(), signal.SIGTERM)             # outside the search: as Ctrl-C
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert signal.getsignal(signal.SIGTERM) is before          # the handler from before is back
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_a_job_driver_leaves_rays_working_dir_with_its_space(tmp_path, monkeypatch):
    from tuner.run import leave_ray_working_dir, parse_args
    from tuner.spaces import find_space

    ray_dir = tmp_path / "_ray_pkg_x"
    (ray_dir / "job_space").mkdir(parents=True)
    (ray_dir / "job_space" / "mine.yaml").write_text("a: 1\n")
    monkeypatch.chdir(ray_dir)
    args = parse_args(["--space", "job_space/mine.yaml"])
    leave_ray_working_dir(args)
    shutil.rmtree(ray_dir)               # what Ray does when it unpacks the directory again
    assert os.getcwd() != str(ray_dir) and open(args.space).read() == "a: 1\n"
    assert find_space(args.space) == Path(os.getcwd()) / "mine.yaml"     # tuner.run finds it by that text
