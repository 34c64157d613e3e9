"""Where the wall time of a quickstart search goes: training steps against everything else (imports, Ray
start, setup, scheduling and worker start, evaluation, checkpoints and reports, MLflow, the conclusion).

    python benchmarks/overhead.py                      # quickstart, one trial at a time (exact accounting)
    python benchmarks/overhead.py --concurrent 2       # as it normally runs (wall time only is exact)
"""

from __future__ import annotations

import time

START = time.perf_counter()   # before the heavy imports: they are part of what a user waits for

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402

from tuner.run import parse_args  # noqa: E402  (imports torch, Ray's Tune, MLflow)
from tuner.driver import run_search  # noqa: E402
from tuner.timing import Timings  # noqa: E402

IMPORTED = time.perf_counter()


def trial_times(folder: Path) -> dict[str, float]:
    """Sums over every trial's reported epochs: training steps, evaluation, and the rest of each trial's
    time (model build, data to device, checkpoint save and persist, report)."""
    train = evaluate = total = epochs = 0.0
    for progress in folder.glob("trial_*/progress.csv"):
        df = pd.read_csv(progress)
        epochs += (df.get("epoch", pd.Series(dtype=float)).fillna(0) > 0).sum()
        train += df.get("epoch_seconds", pd.Series(dtype=float)).fillna(0).sum()
        evaluate += df.get("eval_seconds", pd.Series(dtype=float)).fillna(0).sum()
        total += df["time_this_iter_s"].sum()
    return {"train": train, "eval": evaluate, "trial_other": total - train - evaluate, "trials_total": total,
            "trial_epochs": int(epochs)}


def measure(args) -> dict:
    from tuner.tracking import TrialRuns

    timings = Timings()
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        cli = ["--space", args.space, "--name", "overhead", "--storage-path", f"{tmp}/rr", "--tracking-uri",
               f"sqlite:///{tmp}/mlflow.db", "--max-concurrent", str(args.concurrent), *args.extra]
        start = time.perf_counter()
        code = run_search(parse_args(cli), timings)
        wall = time.perf_counter() - start
        folder = Path(tmp) / "rr" / "overhead"
        run_id = json.loads((folder / "search_settings.json").read_text())["search_run_id"]
        mlflow_s = TrialRuns.live(run_id).mlflow.seconds
        parts = trial_times(folder)
    return {"code": code, "imports": IMPORTED - START, "wall": wall, "phases": timings.seconds,
            "mlflow_trials": mlflow_s, **parts}


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
    p.add_argument("extra", nargs="*", help="more tuner.run flags, after --")
    args = p.parse_args(argv)
    m = measure(args)
    print(table(m, args))
    return m


if __name__ == "__main__":
    main()
