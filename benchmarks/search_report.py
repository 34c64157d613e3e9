"""How long the search's part of ``python -m tuner.analyze`` takes for a large search.

It writes a search of N trials into a fresh MLflow store with ``MlflowClient``, the way ``tuner.run`` leaves
one (the search run's params from ``tuner.search.search_settings``, a nested run per trial with its params,
per-epoch metrics, costs, end reason and start and end times): quickstart's space sampled at random, each
trial's network built to count its parameters (the ones that cannot be built are invalid architectures),
learning curves made up from the settings, and asynchronous successive halving deciding at each rung as ASHA
does (a trial goes on if its score is in the top 1/reduction_factor of the scores recorded at that rung so
far). Then it runs ``python -m tuner.analyze --search NAME --search-only`` and reports its times.

    python benchmarks/search_report.py                  # 100 trials
    python benchmarks/search_report.py --trials 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from models import ArchitectureError, build_model  # noqa: E402
from tuner.costs import parameter_count  # noqa: E402
from tuner.search import SearchOptions, effective_space, search_settings  # noqa: E402
from tuner.spaces import load_space  # noqa: E402
from tuner.tracking import PARENT_TAG, flat_params  # noqa: E402

NAME = "bench"


def sampled_configs(n: int, seed: int):
    """The effective space and n configs drawn from it at random (as Ray's domains draw)."""
    space = load_space("quickstart")
    opts = SearchOptions(NAME, "/tmp/bench", n, space.max_epochs, 1.0, 0.0, seed=seed)
    eff = effective_space(space, opts)
    rng = np.random.default_rng(seed)
    domains = eff.param_space()
    configs = [{k: (v.sample(random_state=int(rng.integers(2**31))) if k in eff.search else v)
                for k, v in domains.items()} for _ in range(n)]
    return eff, opts, configs


def curve(config: dict, epochs: int, rng) -> list[float]:
    """A made-up validation accuracy per epoch: best near lr 3e-3, worse with much dropout."""
    quality = 0.99 - 0.12 * abs(math.log10(config["lr"] / 3e-3)) - 0.1 * config["dropout"]
    speed = 2.0 + 4.0 * rng.random()
    return [float(np.clip(quality * (1 - math.exp(-e / speed)) + 0.01 * rng.standard_normal(), 0, 1))
            for e in range(1, epochs + 1)]


class Asha:
    """Asynchronous successive halving's decision at each rung (Ray's ASHAScheduler's rule)."""

    def __init__(self, grace: int, factor: int, max_t: int):
        self.factor, self.rungs = factor, {}
        epoch = grace
        while epoch < max_t:
            self.rungs[epoch] = []
            epoch *= factor

    def goes_on(self, epoch: int, score: float) -> bool:
        if epoch not in self.rungs:
            return True
        recorded = self.rungs[epoch]      # Ray's rule: the cutoff is over the scores recorded before this one
        goes = not recorded or score >= np.percentile(recorded, (1 - 1 / self.factor) * 100)
        recorded.append(score)
        return goes


def trial_epochs(config: dict, asha: Asha, max_t: int, rng) -> tuple[list[float], str]:
    scores = curve(config, max_t, rng)
    for epoch, score in enumerate(scores, 1):
        if epoch < max_t and not asha.goes_on(epoch, score):
            return scores[:epoch], f"stopped by ASHA at epoch {epoch} (rung {list(asha.rungs).index(epoch)})"
    return scores, "completed"


def epoch_metrics(scores: list[float], params: int, now: int) -> list[Metric]:
    out, seconds = [], 0.2 + params / 50_000
    for epoch, score in enumerate(scores, 1):
        values = {"val_accuracy": score, "val_loss": 2.3 * (1 - score), "train_accuracy": score,
                  "train_loss": 2.3 * (1 - score), "lr": 1e-3, "epoch": epoch, "epoch_seconds": seconds,
                  "eval_seconds": seconds / 20, "images_per_second": 1437 / seconds, "checkpoint_seconds": 0.01,
                  "report_seconds": 0.002, **({"setup_seconds": 1.0, "params": params, "latency_ms": params / 1e5,
                                               "latency_batch_ms": params / 2e3} if epoch == 1 else {})}
        out += [Metric(k, float(v), now, epoch) for k, v in values.items()]
    return out


def write_trial(client: MlflowClient, exp: str, parent: str, i: int, config: dict, asha: Asha, max_t: int, rng,
                start_ms: int) -> int:
    tags = {PARENT_TAG: parent, "tuner.trial_id": f"{i:08x}"}
    run = client.create_run(exp, run_name=f"trial_{i:08x}", tags=tags, start_time=start_ms)
    try:
        params = parameter_count(build_model("convnet", config, (1, 8, 8), 10))
        scores, reason = trial_epochs(config, asha, max_t, rng)
    except ArchitectureError as exc:
        params, scores, reason = 0, [], f"invalid architecture: {exc}"
    metrics = epoch_metrics(scores, params, start_ms)
    for k in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[k:k + 1000],
                         params=flat_params(config) if k == 0 else [], tags=[RunTag("tuner.end_reason", reason)])
    if not metrics:
        client.log_batch(run.info.run_id, params=flat_params(config), tags=[RunTag("tuner.end_reason", reason)])
    end = start_ms + int(1000 * (1.5 + len(scores) * (0.21 + params / 50_000)))
    client.set_terminated(run.info.run_id, "FINISHED", end_time=end)
    return end


def fabricate(uri: str, n: int, seed: int = 0) -> None:
    """A finished search of n trials, named ``bench``, in the store at ``uri``."""
    eff, opts, configs = sampled_configs(n, seed)
    client, rng = MlflowClient(uri), np.random.default_rng(seed)
    exp = client.create_experiment("bench")
    start = int(time.time() * 1000)
    parent = client.create_run(exp, run_name=NAME, tags={"tuner.search": NAME, "tuner.space": eff.name},
                               start_time=start).info.run_id
    client.log_batch(parent, params=[Param(p.key, p.value) for p in flat_params(search_settings(eff, opts))])
    asha, ends = Asha(eff.grace_period, eff.reduction_factor, eff.max_epochs), [start]
    for i, config in enumerate(configs):   # two at a time, as on two cores
        ends.append(write_trial(client, exp, parent, i, config, asha, eff.max_epochs, rng, ends[max(0, i - 1)]))
    client.set_terminated(parent, "FINISHED", end_time=max(ends))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="search-report-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        fabricate(uri, args.trials, args.seed)
        made = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "tuner.analyze", "--search", NAME, "--search-only", "--tracking-uri", uri,
               "--out", f"{tmp}/out"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        summary = json.loads(Path(tmp, "out", "summary.json").read_text())
    seconds = summary["seconds"]
    print(f"| {args.trials} trials ({summary['outcomes']}) | seconds |\n|---|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.1f} |")
    print(f"| the whole command, imports included | {wall:.1f} |")
    print(f"(writing the record took {made:.1f} s)")
    return {"seconds": seconds, "wall": wall, "summary": summary}


if __name__ == "__main__":
    main()
