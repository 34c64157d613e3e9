"""``python -m tuner.run --submit ADDRESS``: the search as a Ray Job, whose driver runs on the cluster.

Everything that can be checked on this machine is checked first (the flags, the space, the names, and that
the storage path and the tracking store are ones a driver in a temporary folder on the cluster can use).
Then a short check job runs on the cluster the same checks a driver started there with ``--address`` runs
(the tracking server answers, every node sees the storage path): the job server's HTTP API is all this
machine may reach, so the cluster checks itself, in a job, with the code and environment the search will
have. Only then is the search's own job submitted, named like the search.

What travels (Ray's runtime environment): a temporary working directory holding the space file and, when
this is a source checkout, the ``tuner``, ``models`` and ``search_spaces`` packages, so the cluster runs
this code; an installed tuner runs the cluster's own installation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from tuner.errors import UserError
from tuner.guards import redact, redact_all

PACKAGES = ("tuner", "models", "search_spaces")
SPACE_FOLDER = "job_space"
STOP_WAIT_SECONDS = 120     # Ray Jobs' grace between the stop signal and SIGKILL (its default is 3 s)
CHECK_SECONDS = 300         # the check job: runtime environment, imports, the nodes' answers
TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")
SKIPPED_FLAGS = ("space", "name", "submit", "list", "help")   # set by the job itself, or not for a search


def job_client(address: str):
    """Ray's JobSubmissionClient for ``address`` (the job server, http://HOST:8265), or one line."""
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):   # Ray would look for a cluster there for 40 s, then raise
        raise UserError(f"{redact(address)} is not a Ray job server's address; give the head's dashboard, "
                        f"http://HOST:8265")
    # Ray lets $RAY_API_SERVER_ADDRESS and $RAY_ADDRESS override the address it is given; here the address
    # given is the one meant.
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the Ray job server at {redact(address)} cannot be used: {redact(first)[:300]}; start the "
                        f"cluster's head with the dashboard (ray start --head --dashboard-host 127.0.0.1) and "
                        f"give its address, http://HOST:8265") from None
    finally:
        os.environ.update(saved)


def check_submittable(args: argparse.Namespace) -> str:
    """What a driver on the cluster cannot use, refused here; returns the tracking URI."""
    if args.resume:
        raise UserError("--submit starts a search; continue a stopped one with python -m tuner.jobs resume NAME")
    if args.address:
        raise UserError("--submit runs the driver on the cluster and --address runs it here: give one of them")
    storage = args.storage_path
    if "://" not in storage and not Path(storage).is_absolute():
        raise UserError(f"--storage-path {storage} is not an absolute path: a submitted search runs in a "
                        f"temporary folder on the cluster, so give a folder every node mounts "
                        f"(--storage-path /shared/ray_results) or s3://bucket/path")
    if args.data_dir and not Path(args.data_dir).is_absolute():
        raise UserError(f"--data-dir {args.data_dir} is not an absolute path: a submitted search runs in a temporary "
                        f"folder on the cluster; give the cluster's dataset folder (--data-dir /shared/data), or "
                        f"leave it out for the cluster's $TUNER_DATA_DIR")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("a submitted search needs a tracking server the cluster reaches: --tracking-uri "
                        "http://HOST:5000 (the default sqlite file is on this machine)")
    if redact(uri) != uri:     # the job's command line is kept in the cluster's job table, for all to list
        raise UserError(f"the tracking URI {redact(uri)} holds credentials, which the submitted job's command line "
                        f"would carry into the cluster's job table; give them to the cluster (MLFLOW_TRACKING_USERNAME "
                        f"and MLFLOW_TRACKING_PASSWORD in the environment of ray start) and the URI without them")
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        raise UserError(f"the tracking store {redact(uri)} is a file: a submitted search runs in a temporary "
                        f"folder on the cluster; start `mlflow server` where the cluster reaches it and pass "
                        f"--tracking-uri http://HOST:5000")
    return uri


def entry_flags(args: argparse.Namespace) -> list[str]:
    """The command line's flags, as parsed, for ``tuner.run`` on the cluster (without --space, --name,
    --submit, which the job sets)."""
    from tuner.run import build_parser

    out = []
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in SKIPPED_FLAGS or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if value is True:
            out.append(flag)
        else:
            out += [a for v in (value if isinstance(value, list) else [value]) for a in (flag, str(v))]
    return out


def entrypoint(space_file: str, name: str, flags: list[str]) -> str:
    return shlex.join(["python", "-m", "tuner.run", "--space", f"{SPACE_FOLDER}/{space_file}", "--name", name,
                       *flags])


def source_root() -> Path | None:
    """The checkout this code runs from, or None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and all((root / p).is_dir() for p in PACKAGES) else None


@contextlib.contextmanager
def runtime_env(space_file: str, space_text: str, job_id: str):
    """Ray's runtime environment for the job ``job_id``: a temporary working directory (the space file,
    and this checkout's packages), and the stop grace Ray Jobs reads from the job's environment.

    Ray names a working directory by a hash of its files and unpacks it anew, deleting what is there,
    whenever a node sets it up again; two jobs with the same files (a check and its search, a killed search
    and its resume) would share one folder and unpack it under each other. The job's id in a file of its
    own gives every job its own folder (and the driver leaves it: ``tuner.run.leave_ray_working_dir``)."""
    with tempfile.TemporaryDirectory(prefix="tuner-job-") as folder:
        root = source_root()
        for package in PACKAGES if root else ():
            shutil.copytree(root / package, Path(folder) / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (Path(folder) / SPACE_FOLDER).mkdir()
        (Path(folder) / SPACE_FOLDER / space_file).write_text(space_text)
        (Path(folder) / SPACE_FOLDER / "job_id").write_text(job_id)
        yield {"working_dir": folder,
               "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_SECONDS), "PYTHONUNBUFFERED": "1",
                            "TUNER_JOB_DRIVER": "1"}}


def metadata(name: str, space, space_text: str, args: argparse.Namespace, uri: str) -> dict[str, str]:
    """What the job server keeps beside the job (text only): enough to list, follow and resume it."""
    return {"tuner.search": name, "tuner.space": space.name, "tuner.space_file": space.path.name,
            "tuner.space_yaml": space_text, "tuner.storage": redact(args.storage_path),
            "tuner.tracking_uri": redact(uri), "tuner.experiment": args.experiment or space.name,
            "tuner.metric": space.metric, "tuner.mode": space.mode,
            "tuner.argv": json.dumps(redact_all(getattr(args, "argv", None) or []))}


def wait_for_end(client, job_id: str, timeout: float) -> str | None:
    """The job's final status, or None if it is still going after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(1)
    return None


def check_on_cluster(client, space_file: str, space_text: str, storage: str, uri: str, name: str) -> None:
    """The check job (``python -m tuner.jobs check``): its error line is this command's."""
    job_id = f"{name}-check-{uuid.uuid4().hex[:6]}"
    with runtime_env(space_file, space_text, job_id) as env:
        client.submit_job(entrypoint=shlex.join(["python", "-m", "tuner.jobs", "check", "--storage-path", storage,
                                                 "--tracking-uri", uri]),
                          submission_id=job_id, runtime_env=env, metadata={"tuner.check": name})
    try:
        status = wait_for_end(client, job_id, CHECK_SECONDS)
        if status is None:
            client.stop_job(job_id)
            raise UserError(f"the cluster did not run the check job within {CHECK_SECONDS} s; is it busy "
                            f"(ray status)?")
        if status != "SUCCEEDED":
            lines = [ln for ln in client.get_job_logs(job_id).splitlines() if ln.strip()]
            errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
            why = errors[-1] if errors else (lines[-1] if lines else client.get_job_info(job_id).message or status)
            raise UserError(f"on the cluster: {redact(why.strip())[:500]}")
    finally:
        if wait_for_end(client, job_id, 30):
            client.delete_job(job_id)


def submit_search(args: argparse.Namespace) -> int:
    from tuner.driver import check_inputs
    from tuner.guards import unique_name

    space, _ = check_inputs(args)
    uri = check_submittable(args)
    args.tracking_uri = uri     # from $MLFLOW_TRACKING_URI too: the job runs in the cluster's environment, not this one
    name = args.name or unique_name(space.name)
    client = job_client(args.submit)
    if any((j.metadata or {}).get("tuner.search") == name for j in client.list_jobs()):
        raise UserError(f"a search named {name} was submitted to this cluster already; continue it with "
                        f"python -m tuner.jobs resume {name}, or choose another --name")
    text = space.path.read_text()
    check_on_cluster(client, space.path.name, text, args.storage_path, uri, name)
    with runtime_env(space.path.name, text, name) as env:
        client.submit_job(entrypoint=entrypoint(space.path.name, name, entry_flags(args)), submission_id=name,
                          runtime_env=env, metadata=metadata(name, space, text, args, uri))
    where = f" --address {args.submit}"
    print(f"submitted search {name} as Ray job {name} to {redact(args.submit)}\n"
          f"  follow it: python -m tuner.jobs logs {name} --follow{where}\n"
          f"  list:      python -m tuner.jobs list{where}\n"
          f"  stop:      python -m tuner.jobs stop {name}{where}  (resume: python -m tuner.jobs resume {name})")
    return 0
