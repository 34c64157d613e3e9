"""python -m tuner.jobs list|logs|stop|resume: searches submitted as Ray Jobs (tuner.run --submit).

A search's jobs are named like it: NAME for the first, NAME-r1, NAME-r2, ... for each resume; a command
acts on the search's latest job. Bad input (no such search, a stop of a search that is not running, a
resume of one that is) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # `list` shows "?" for a store it cannot reach
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

from tuner.cli import Help, exit_code  # noqa: E402
from tuner.errors import UserError  # noqa: E402
from tuner.guards import check_name, redact  # noqa: E402

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def default_address() -> str:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def search_jobs(client, name: str | None = None) -> list:
    """The cluster's jobs of tuner searches (of search ``name``), oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("tuner.search")
            and (name is None or j.metadata["tuner.search"] == name)]
    return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def latest_job(client, name: str):
    jobs = search_jobs(client, check_name("the search's name", name))
    if not jobs:
        raise UserError(f"no search named {name} was submitted to this cluster; see python -m tuner.jobs list")
    return jobs[-1]


def elapsed(job) -> str:
    if not job.start_time:
        return "-"
    seconds = int(((job.end_time or time.time() * 1000) - job.start_time) / 1000)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def tracking_uri(meta: dict) -> str | None:
    """The search's tracking URI; one stored without its credentials only if $MLFLOW_TRACKING_URI is it."""
    stored, env = meta.get("tuner.tracking_uri"), os.environ.get("MLFLOW_TRACKING_URI")
    if stored and "***" in stored:
        return env if env and redact(env) == stored else None
    return stored


def best_so_far(meta: dict) -> str:
    """The search's best score in MLflow: once it has concluded, its own; before, the best latest score
    of its trials. '?' where the tracking store cannot be read from here."""
    uri = tracking_uri(meta)
    if not uri:
        return "?"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(meta["tuner.experiment"])
        search = f"tags.`tuner.search` = '{meta['tuner.search']}'"
        parents = [r for r in client.search_runs([exp.experiment_id], filter_string=search, max_results=20)
                   if "mlflow.parentRunId" not in r.data.tags] if exp else []
        if not parents:
            return "-"
        metric, order = meta["tuner.metric"], "DESC" if meta.get("tuner.mode") == "max" else "ASC"
        if f"best_{metric}" in parents[0].data.metrics:            # the search has concluded
            return f"{parents[0].data.metrics[f'best_{metric}']:.4f}"
        best = client.search_runs([exp.experiment_id], max_results=1, order_by=[f"metrics.`{metric}` {order}"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
        value = best[0].data.metrics.get(metric) if best else None
        return "-" if value is None else f"{value:.4f}"
    except Exception:
        return "?"


def list_searches(client) -> int:
    jobs = search_jobs(client)
    if not jobs:
        print("no searches on this cluster")
        return 0
    rows = [("SEARCH", "JOB", "STATUS", "ELAPSED", "BEST")]
    for job in jobs:
        meta = job.metadata
        rows.append((meta["tuner.search"], job.submission_id or job.job_id, str(job.status.value), elapsed(job),
                     f"{best_so_far(meta)} {meta.get('tuner.metric', '')}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[4]]))
    return 0


def show_logs(client, name: str, follow: bool) -> int:
    job = latest_job(client, name)
    if not follow:
        print(client.get_job_logs(job.submission_id), end="")
        return 0
    import asyncio

    async def tail():
        async for chunk in client.tail_job_logs(job.submission_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    return 0


def stop_search(client, name: str) -> int:
    """Ray Jobs' stop: SIGTERM to the driver, which ends the search as Ctrl-C does (tuner.stopping); the job
    gives it STOP_WAIT_SECONDS before SIGKILL. Waits for the job to end."""
    from tuner.submit import STOP_WAIT_SECONDS, wait_for_end

    job = latest_job(client, name)
    status = str(job.status.value)
    if status not in ("PENDING", "RUNNING"):
        raise UserError(f"search {name} is not running: its job {job.submission_id} is {status}")
    client.stop_job(job.submission_id)
    print(f"stopping search {name} (job {job.submission_id}): the driver saves the search and closes its MLflow "
          f"runs, {STOP_WAIT_SECONDS} s at most", flush=True)
    status = wait_for_end(client, job.submission_id, STOP_WAIT_SECONDS + 30)
    if status is None:
        raise UserError(f"job {job.submission_id} has not ended after {STOP_WAIT_SECONDS + 30} s; see "
                        f"python -m tuner.jobs logs {name}")
    print(f"search {name} {status.lower()}; continue it with python -m tuner.jobs resume {name}")
    return 0


def next_submission_id(jobs: list, name: str) -> str:
    taken = [int(m.group(1)) for j in jobs if (m := re.fullmatch(rf"{re.escape(name)}-r(\d+)", j.submission_id or ""))]
    return f"{name}-r{max(taken, default=0) + 1}"


def resume_search(client, name: str) -> int:
    """A new job that continues a stopped or failed search: its last command with --resume."""
    from tuner.submit import runtime_env

    job = latest_job(client, name)
    status = str(job.status.value)
    if status in ("PENDING", "RUNNING"):
        raise UserError(f"search {name} is running (job {job.submission_id}); stop it first, or follow it with "
                        f"python -m tuner.jobs logs {name} --follow")
    if status == "SUCCEEDED":
        raise UserError(f"search {name} has finished (job {job.submission_id} succeeded): nothing to resume")
    argv = shlex.split(job.entrypoint)
    command = shlex.join(argv if "--resume" in argv else [*argv, "--resume"])
    submission_id = next_submission_id(search_jobs(client, name), name)
    meta = job.metadata
    with runtime_env(meta["tuner.space_file"], meta["tuner.space_yaml"], submission_id) as env:
        client.submit_job(entrypoint=command, submission_id=submission_id, runtime_env=env, metadata=meta)
    print(f"resumed search {name} as Ray job {submission_id} (its job {job.submission_id} was {status}); "
          f"follow it: python -m tuner.jobs logs {name} --follow")
    return 0


def check_cluster(args: argparse.Namespace) -> int:
    """Run on the cluster by tuner.run --submit, as a job: what a driver there will need."""
    from tuner.cluster import check_multi_node, connect_ray
    from tuner.store import check_tracking

    check_tracking(args.tracking_uri)
    connect_ray(None)                     # the job's cluster ($RAY_ADDRESS, set by Ray Jobs)
    nodes = check_multi_node(args.storage_path, args.tracking_uri)
    print(f"ok: {nodes} node(s) see {redact(args.storage_path)}; MLflow at {redact(args.tracking_uri)} answers")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False, formatter_class=Help)
    common.add_argument("--address",
                        help="the cluster's job server (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else "
                             f"{DEFAULT_ADDRESS})")
    p = argparse.ArgumentParser(prog="python -m tuner.jobs", description=__doc__.splitlines()[0], formatter_class=Help)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], formatter_class=Help,
                   help="searches on the cluster: job, status, elapsed time, best score so far (MLflow)")
    logs = sub.add_parser("logs", parents=[common], formatter_class=Help, help="a search's log (its latest job)")
    logs.add_argument("--follow", action="store_true", help="follow the log until the job ends")
    stop = sub.add_parser("stop", parents=[common], formatter_class=Help,
                          help="stop a search cleanly: its state saved, its MLflow runs KILLED, resumable")
    resume = sub.add_parser("resume", parents=[common], formatter_class=Help,
                            help="continue a stopped or failed search as a new job")
    for cmd in (logs, stop, resume):
        cmd.add_argument("name", help="the search's name, as tuner.run --submit printed it")
    check = sub.add_parser("check", help="(run on the cluster by tuner.run --submit) check storage and tracking")
    check.add_argument("--storage-path", required=True)
    check.add_argument("--tracking-uri", required=True)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.command == "check":
        return check_cluster(args)
    from tuner.submit import job_client

    client = job_client(args.address or default_address())
    if args.command == "list":
        return list_searches(client)
    if args.command == "logs":
        return show_logs(client, args.name, args.follow)
    return (stop_search if args.command == "stop" else resume_search)(client, args.name)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: run(args), "interrupted")


if __name__ == "__main__":
    sys.exit(main())
