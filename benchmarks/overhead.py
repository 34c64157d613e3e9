"""Where the wall time of a quickstart search goes: training steps against everything else (imports, Ray
start, setup, scheduling and worker start, evaluation, checkpoints and reports, MLflow, the conclusion);
and, with --exit, how long the command takes to end after its last line and how many lines it printed.

    python benchmarks/overhead.py                      # quickstart, one trial at a time (exact accounting)
    python benchmarks/overhead.py --concurrent 2       # as it normally runs (wall time only is exact)
    python benchmarks/overhead.py --exit               # the command as a user runs it: lines, time to exit
"""

from __future__ import annotations

import time

START = time.perf_counter()   # before the heavy imports: they are part of what a user waits for

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.records import trial_times  # noqa: E402
from tuner.run import parse_args  # noqa: E402  (imports torch, Ray's Tune, MLflow)
from tuner.driver import run_search  # noqa: E402
from tuner.timing import Timings  # noqa: E402

IMPORTED = time.perf_counter()


class SearchTimings(Timings):
    """Timings that note the trials' MLflow seconds as the conclusion begins: the conclusion's own MLflow
    calls (test scores, datasets, models, the leaderboard) go through the same client and belong to it."""

    mlflow_in_search: float | None = None

    @contextlib.contextmanager
    def phase(self, name: str):
        from tuner.tracking import TrialRuns

        if name == "conclusion" and self.mlflow_in_search is None:
            self.mlflow_in_search = sum(runs.mlflow.seconds for runs in TrialRuns._live.values())
        with super().phase(name):
            yield


def measure(args) -> dict:
    timings = SearchTimings()
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        cli = ["--space", args.space, "--name", "overhead", "--storage-path", f"{tmp}/rr", "--tracking-uri",
               f"sqlite:///{tmp}/mlflow.db", "--max-concurrent", str(args.concurrent), *args.extra]
        start = time.perf_counter()
        code = run_search(parse_args(cli), timings)
        wall = time.perf_counter() - start
        folder = Path(tmp) / "rr" / "overhead"
        parts = trial_times(folder)
    return {"code": code, "imports": IMPORTED - START, "wall": wall, "phases": timings.seconds,
            "mlflow_trials": timings.mlflow_in_search or 0.0, **parts}


def exit_time(args) -> dict:
    """``python -m tuner.run`` in a subprocess, as a user runs it (Ray started by the search): the lines it
    prints (stdout and stderr) and the seconds from its wall-time line, its last, to the end of the process."""
    with tempfile.TemporaryDirectory(prefix="exit-") as tmp:
        cmd = [sys.executable, "-m", "tuner.run", "--space", args.space, "--name", "exit", "--storage-path",
               f"{tmp}/rr", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", *args.extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}   # each line as it is printed
        start, wall_line, lines = time.perf_counter(), None, []
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip().startswith("wall time:"):
                wall_line = time.perf_counter()
        code = proc.wait()
        end = time.perf_counter()
    return {"code": code, "lines": len(lines), "total": end - start,
            "after_wall_line": end - wall_line if wall_line else None, "output": lines}


def exit_table(m: dict, args) -> str:
    after = f"{m['after_wall_line']:.2f} s" if m["after_wall_line"] is not None else "no wall-time line"
    return (f"exit: {args.space} {' '.join(args.extra)}; {m['lines']} lines printed; {after} from the wall-time "
            f"line to the end of the process; {m['total']:.1f} s in all (exit status {m['code']})")


def table(m: dict, args) -> str:
    total = m["imports"] + m["wall"]
    fit = m["phases"]["search"]
    rows = [("Python, torch, Ray, MLflow imports", m["imports"]),
            ("setup: space, data, tracking store, search run", m["phases"].get("setup", 0)),
            ("Ray start", m["phases"].get("Ray start", 0)),
            ("training steps", m["train"]),
            ("validation", m["eval"]),
            ("in trials: model build, data to device, checkpoints, reports", m["trial_other"]),
            ("MLflow writes for trials (driver)", m["mlflow_trials"]),
            ("scheduling, worker start, driver loop", fit - m["trials_total"] - m["mlflow_trials"]),
            ("conclusion: test score, models to the registry, plots", m["phases"].get("conclusion", 0))]
    lines = [f"overhead: {args.space}, {args.concurrent} trial(s) at a time, {m['trial_epochs']} trial-epochs; "
             f"wall time {total:.1f} s", "",
             "| part | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {secs:.1f} | {secs / total:.1%} |" for name, secs in rows]
    not_training = 1 - m["train"] / total
    lines += ["", f"not training steps: {not_training:.1%} of the wall time"
              + (" (with trials in parallel the per-part rows overlap; the total is exact)" if args.concurrent > 1
                 else "")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="quickstart", help="(default: quickstart)")
    p.add_argument("--concurrent", type=int, default=1, help="trials at once (default: 1, exact accounting)")
    p.add_argument("--exit", action="store_true", help="run the command in a subprocess and time its exit instead")
    p.add_argument("extra", nargs="*", help="more tuner.run flags, after --")
    args = p.parse_args(argv)
    m = exit_time(args) if args.exit else measure(args)
    print(exit_table(m, args) if args.exit else table(m, args))
    return m


if __name__ == "__main__":
    main()
