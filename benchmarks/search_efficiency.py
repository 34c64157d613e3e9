"""ASHA + Optuna (TPE) against FIFO random search (and an exhaustive grid where a space is all choices) on
the same space with the same budget of trial-epochs, over several seeds: the best validation accuracy each
reaches, and how many trial-epochs each needs to reach random search's final best.

    python benchmarks/search_efficiency.py --budget 200 --seeds 0 1 2            # report 003's MNIST space
    python benchmarks/search_efficiency.py --set lr=0.001 --set weight_decay=1e-7  # all choices: + grid
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402

from tuner.cli import Help  # noqa: E402
from tuner.data import limit_indices, prepare_trial_data, resolve_data_dir  # noqa: E402
from tuner.search import SearchOptions, effective_space, make_scheduler, make_searcher, make_trainable  # noqa: E402
from tuner.spaces import load_space, parse_override  # noqa: E402


def epochs_of(result: dict) -> list[dict]:
    """The trained epochs a result carries (a trial reports several at once; a rejected config none)."""
    return result.get("epochs") or ([result] if result.get("epoch", 0) > 0 else [])


class EpochBudget(tune.Stopper):
    """Stops the whole search once its trials have run ``budget`` epochs between them."""

    def __init__(self, budget: int):
        self.budget, self.spent = budget, 0

    def __call__(self, trial_id, result) -> bool:
        self.spent += len(epochs_of(result))
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.budget


@dataclass
class Trace(tune.Callback):
    """Every result in the order the driver received it: (validation score) per trial-epoch."""

    metric: str
    scores: list[float] = field(default_factory=list)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.scores += [float(epoch[self.metric]) for epoch in epochs_of(result)]


def run_method(method: str, space, data, seed: int, budget: int, storage: str, overrides: dict) -> list[float]:
    """One search; returns the best-so-far score after each trial-epoch."""
    opts = SearchOptions(f"{method}-{seed}", storage, num_samples=budget, max_epochs=space.max_epochs,
                         cpus_per_trial=1, gpus_per_trial=0, seed=seed, verbose=0, grid=method == "grid",
                         overrides=overrides)
    space = effective_space(space, opts)
    trace = Trace(space.metric)
    if method == "asha+tpe":
        searcher, scheduler, params = make_searcher(space, opts), make_scheduler(space), space.param_space()
    else:   # every trial runs to max_epochs: FIFO
        searcher = BasicVariantGenerator(random_state=seed, max_concurrent=0)
        scheduler, params = FIFOScheduler(), space.grid_space() if method == "grid" else space.param_space()
    # Enough trials to spend the budget: every random trial runs max_epochs; an ASHA trial may stop at grace.
    per_trial = space.grace_period if method == "asha+tpe" else space.max_epochs
    samples = 1 if method == "grid" else math.ceil(budget / per_trial)
    tuner = tune.Tuner(make_trainable(data, opts, space), param_space=params,
                       tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher,
                                                   scheduler=scheduler, num_samples=samples, reuse_actors=True),
                       run_config=tune.RunConfig(name=opts.name, storage_path=storage, verbose=0,
                                                 stop=EpochBudget(budget), callbacks=[trace]))
    tuner.fit()
    best, curve = float("-inf"), []
    for score in trace.scores[:budget]:
        best = max(best, score)
        curve.append(best)
    return curve


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, best in enumerate(curve) if best >= target - 1e-12), None)


def summarise(curves: dict[str, dict[int, list[float]]], budget: int) -> list[dict]:
    """Per method: mean best score; trial-epochs to reach random search's final best, per seed."""
    rows = []
    for method, by_seed in curves.items():
        reach = []
        for seed, curve in by_seed.items():
            target = curves["fifo+random"][seed][-1]
            reach.append(epochs_to_reach(curve, target))
        finals = [c[-1] for c in by_seed.values()]
        rows.append({"method": method, "best": statistics.mean(finals), "finals": finals,
                     "spread": statistics.pstdev(finals), "reach": reach, "budget": budget})
    return rows


def table(rows: list[dict], args) -> str:
    fixed = f", fixed {' '.join(args.overrides)}" if args.overrides else ""
    lines = [f"search_efficiency: space {args.space}{fixed}, {args.train_images} training images per trial, "
             f"budget {args.budget} trial-epochs, seeds {args.seeds}", "",
             "| method | best val score (mean ± sd) | best, per seed | trial-epochs to reach random's final best, "
             "per seed | share of the budget |", "|---|---:|---|---|---:|"]
    for r in rows:
        reached = [x for x in r["reach"] if x is not None]
        share = f"{statistics.mean(reached) / r['budget']:.2f}" if len(reached) == len(r["reach"]) else "not all"
        lines.append(f"| {r['method']} | {r['best']:.4f} ± {r['spread']:.4f} | "
                     f"{', '.join(f'{f:.4f}' for f in r['finals'])} | "
                     f"{', '.join('never' if x is None else str(x) for x in r['reach'])} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Help)
    p.add_argument("--space", default="mnist_filters_strides")
    p.add_argument("--budget", type=int, default=200, help="trial-epochs each search may spend")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, help="override the space's max_epochs")
    p.add_argument("--train-images", type=int, default=8000,
                   help="training images per trial (a stratified subset; the validation split stays whole)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a setting, as tuner.run --set (fixing every non-choice adds the grid)")
    p.add_argument("--data-dir", help="dataset folder (default: $TUNER_DATA_DIR, else ./data)")
    args = p.parse_args(argv)
    space = load_space(args.space)
    overrides = dict(parse_override(o, space) for o in args.overrides)
    space.search = {k: v for k, v in space.search.items() if k not in overrides}
    space.start = []    # no head start from a report's known best setting: both methods sample from scratch
    if space.mode != "max":
        raise SystemExit(f"{args.space} minimises {space.metric}; this benchmark compares maximised scores")
    if args.max_epochs:
        space.max_epochs, space.grace_period = args.max_epochs, min(space.grace_period, args.max_epochs)
    methods = ["asha+tpe", "fifo+random"] + (["grid"] if all(k == "choice" for k, _ in space.search.values()) else [])
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, logging_level="WARNING")
    curves: dict[str, dict[int, list[float]]] = {m: {} for m in methods}
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as storage:
        for seed in args.seeds:
            data = prepare_trial_data(space.dataset, resolve_data_dir(args.data_dir), space.val_fraction, seed)
            data.train_idx = limit_indices(data.train_idx, data.labels, args.train_images, seed)
            for method in methods:
                curves[method][seed] = run_method(method, space, data, seed, args.budget, storage, overrides)
    if started:
        ray.shutdown()
    rows = summarise(curves, args.budget)
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
