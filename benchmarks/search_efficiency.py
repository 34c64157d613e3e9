"""Search methods side by side on the same spaces with the same budget of trial-epochs, over several seeds: FIFO
random search (every trial to max_epochs; again on other draws, to show what chance does), ASHA with random
search, and ASHA + Optuna's TPE with the space's searcher settings and with each alternative (independent TPE,
no constant liar, ASHA-stopped trials told as values, fewer start-up trials, a Latin-hypercube start, other
grace periods, reduction factors and brackets, Optuna's GP sampler, ASHA with a quorum at each rung, ASHA
without its chance floor, a third of the trials drawn at random between TPE's, ASHA with Hyperband's brackets,
and Optuna's median and Hyperband pruners instead of ASHA).
Per method: the best validation score (mean and sd over seeds), the trial-epochs it needs to reach random
search's final best on each seed, and wall time.

    python benchmarks/search_efficiency.py                       # both spaces, six methods, seeds 0 1 2
    python benchmarks/search_efficiency.py --spaces mnist_filters_strides --methods tpe tpe-factor-2
    python benchmarks/search_efficiency.py --budget 200 --methods tpe-independent-quorum --trace-dir traces
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
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
from tuner.console import DropNotices  # noqa: E402
from tuner.data import limit_indices, prepare_trial_data, resolve_data_dir  # noqa: E402
from tuner.sampling import SearcherSettings  # noqa: E402
from tuner.search import SearchOptions, effective_space, make_scheduler, make_searcher, make_trainable  # noqa: E402
from tuner.spaces import Space, load_space, parse_override  # noqa: E402

HERE = Path(__file__).resolve().parent
SPACES = ["mnist_filters_strides", str(HERE / "spaces" / "mnist_deep.yaml")]   # most settings good; most bad


def tpe(**settings):
    """TPE with these searcher settings, every other one as measured first (the multivariate, constant-liar
    TPE that Optuna 5 defaults to; stopped trials pruned; start-up trials by the project's rule)."""
    chosen = SearcherSettings(**{"multivariate": True, "constant_liar": True, "stopped": "pruned", **settings})
    return lambda s: dataclasses.replace(s, searcher=chosen)


def asha(searcher: dict | None = None, **changes):
    """TPE with these searcher settings (as ``tpe``) and these ASHA settings of the space."""
    return lambda s: dataclasses.replace(tpe(**(searcher or {}))(s), **changes)


def no_floor(change):
    """The same method with Ray's ASHA rule alone: trials at chance level are not stopped for it."""
    return lambda s: dataclasses.replace(change(s), stop_at_chance=False)


OTHER_DRAWS = 1_000_003   # offset of the random seed of every random sampling but random search's (random_draws)

# How trials are stopped, from the space and the search's data (whose validation labels set chance level).
SCHEDULERS = {"fifo": lambda space, data: FIFOScheduler(), "asha": make_scheduler,
              "quorum": lambda space, data: make_scheduler(dataclasses.replace(space, quorum=True), data)}

# name -> (how trials are chosen, how they are stopped, the space's settings for it)
METHODS = {
    "random": ("random", "fifo", None),
    "random-again": ("random", "fifo", None),     # random search on draws of its own: how often chance meets the target
    "asha-random": ("random", "asha", None),
    "tpe": ("tpe", "asha", tpe()),
    "tpe-independent": ("tpe", "asha", tpe(multivariate=False, constant_liar=False)),
    "tpe-independent-no-floor": ("tpe", "asha", no_floor(tpe(multivariate=False, constant_liar=False))),
    "tpe-independent-latin": ("tpe", "asha", tpe(multivariate=False, constant_liar=False,
                                                 startup_design="latin_hypercube")),
    "tpe-independent-latin-no-floor": ("tpe", "asha", no_floor(tpe(multivariate=False, constant_liar=False,
                                                                   startup_design="latin_hypercube"))),
    "tpe-independent-liar": ("tpe", "asha", tpe(multivariate=False)),
    "tpe-no-liar": ("tpe", "asha", tpe(constant_liar=False)),
    "tpe-stopped-as-value": ("tpe", "asha", tpe(stopped="value")),
    "tpe-startup-3": ("tpe", "asha", tpe(startup_trials=3)),
    "tpe-hyperband-3": ("tpe", "asha", asha(brackets=3)),
    "tpe-grace-2x": ("tpe", "asha", lambda s: dataclasses.replace(tpe()(s), grace_period=min(2 * s.grace_period,
                                                                                               s.max_epochs))),
    "tpe-factor-2": ("tpe", "asha", asha(reduction_factor=2)),
    "tpe-independent-startup-5": ("tpe", "asha", tpe(multivariate=False, constant_liar=False, startup_trials=5)),
    "tpe-independent-startup-15": ("tpe", "asha", tpe(multivariate=False, constant_liar=False, startup_trials=15)),
    "tpe-independent-factor-2": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False},
                                                     reduction_factor=2)),
    "tpe-independent-quorum": ("tpe", "quorum", tpe(multivariate=False, constant_liar=False)),
    "tpe-independent-random-third": ("tpe", "asha", tpe(multivariate=False, constant_liar=False,
                                                        random_fraction=1 / 3)),
    "tpe-independent-latin-random-third": ("tpe", "asha", tpe(multivariate=False, constant_liar=False,
                                                              startup_design="latin_hypercube", random_fraction=1 / 3)),
    "tpe-independent-factor-4": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False},
                                                     reduction_factor=4)),
    "tpe-independent-grace-1": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False}, grace_period=1)),
    "tpe-independent-hyperband-3": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False}, brackets=3)),
    "tpe-independent-median-pruner": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False},
                                                          pruner="median")),
    "tpe-independent-hyperband-pruner": ("tpe", "asha", asha({"multivariate": False, "constant_liar": False},
                                                             pruner="hyperband")),
    "asha-random-quorum": ("random", "quorum", None),
    "tpe-independent-value": ("tpe", "asha", tpe(multivariate=False, constant_liar=False, stopped="value")),
    "tpe-independent-value-quorum": ("tpe", "quorum", tpe(multivariate=False, constant_liar=False, stopped="value")),
    "gp": ("tpe", "asha", tpe(sampler="gp", stopped="value")),
}
DEFAULT_METHODS = ["random", "asha-random", "tpe", "tpe-independent", "tpe-stopped-as-value", "tpe-startup-3"]


def epochs_of(result: dict) -> list[dict]:
    """The trained epochs a result carries (a trial reports several at once; a rejected config none)."""
    return result.get("epochs") or ([result] if result.get("epoch", 0) > 0 else [])


class EpochBudget(tune.Stopper):
    """Stops the whole search once its trials have run ``budget`` epochs between them. Each epoch counts once:
    Ray hands a stopper a trial's last result a second time when the trial ends (marked done), so a trial's
    epochs are counted past the last one counted for it."""

    def __init__(self, budget: int):
        self.budget, self.spent = budget, 0
        self.counted: dict[str, int] = {}      # trial id -> the last epoch counted for it

    def __call__(self, trial_id, result) -> bool:
        last = self.counted.get(trial_id, 0)
        new = [e["epoch"] for e in epochs_of(result) if e["epoch"] > last]
        if new:
            self.spent += len(new)
            self.counted[trial_id] = max(new)
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.budget


@dataclass
class Trace(tune.Callback):
    """Every result in the order the driver received it: (validation score) per trial-epoch."""

    metric: str
    searched: set[str]                                    # the settings the space searches
    scores: list[float] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)      # the same, with the trial and its settings

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for epoch in epochs_of(result):
            self.scores.append(float(epoch[self.metric]))
            self.events.append({"trial": trial.trial_id, "epoch": epoch["epoch"], "score": self.scores[-1],
                                "config": {k: v for k, v in trial.config.items() if k in self.searched}})


def random_draws(seed: int, method: str) -> BasicVariantGenerator:
    """Random sampling. Random search draws the seed's sequence; every other method that samples at random
    draws another: ASHA with the same sequence would meet random search's best network among its own draws
    and reach it sooner for stopping the others early, a head start that comes from sharing the draws, not
    from the method; ``random-again``, random search itself on other draws, shows how often chance alone
    reaches the first one's best."""
    return BasicVariantGenerator(random_state=seed if method == "random" else seed + OTHER_DRAWS)


def samples_for(budget: int, space: Space, choose: str, stop: str) -> int:
    """Trials enough to spend the budget: a FIFO trial runs max_epochs, an ASHA trial may stop at its grace
    period. Random search gets four times as many: a network the space cannot build (strides that shrink the
    image to nothing) is rejected without an epoch, and on these spaces up to 60% of its draws are; without
    the spare draws it would spend less than the budget the other methods spend. TPE learns to
    avoid such settings, and its start-up design is sized by num_samples, so it keeps the plain count."""
    trials = math.ceil(budget / (space.max_epochs if stop == "fifo" else space.grace_period))
    return 4 * trials if choose == "random" else trials


def run_method(method: str, space: Space, data, seed: int, budget: int, storage: str,
               trace_file: Path | None = None, num_samples: int | None = None) -> tuple[list[float], float, int]:
    """One search; returns the best-so-far score after each trial-epoch, its wall time (s) and how many
    trials it trained to max_epochs. With ``trace_file``, every trial-epoch (trial, epoch, score, settings)
    is written there as JSON. ``num_samples``: trials to run (default: enough to spend the budget)."""
    choose, stop, change = METHODS[method]
    space = change(space) if change else space
    opts = SearchOptions(f"{method}-{seed}", storage, num_samples=budget, max_epochs=space.max_epochs,
                         cpus_per_trial=1, gpus_per_trial=0, seed=seed, verbose=0)
    space = effective_space(space, opts)
    space.num_samples = num_samples or samples_for(budget, space, choose, stop)
    trace = Trace(space.metric, set(space.search))
    search = make_searcher(space, opts) if choose == "tpe" else random_draws(seed, method)
    tuner = tune.Tuner(make_trainable(data, opts, space), param_space=space.param_space(),
                       tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=search,
                                                   scheduler=SCHEDULERS[stop](space, data),
                                                   num_samples=space.num_samples, reuse_actors=True),
                       run_config=tune.RunConfig(name=opts.name, storage_path=storage, verbose=0,
                                                 stop=EpochBudget(budget), callbacks=[trace]))
    started = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - started
    if trace_file:
        trace_file.write_text(json.dumps(trace.events[:budget], indent=0))
    return best_so_far(trace.scores[:budget]), wall, sum(e["epoch"] >= space.max_epochs for e in trace.events[:budget])


def best_so_far(scores: list[float]) -> list[float]:
    """The best score after each trial-epoch; [nan] when no trial trained (every network invalid)."""
    best, curve = float("-inf"), []
    for score in scores:
        best = max(best, score)
        curve.append(best)
    return curve or [float("nan")]


def read_random(folder: str, space: str, seed: int, budget: int, max_epochs: int) -> tuple[list[float], float, int]:
    """Random search's curve from a trace an earlier run wrote (--trace-dir), in place of running it again:
    every method of this run is then counted against that same baseline. Wall time: nan (not run here)."""
    path = Path(folder) / f"{Path(space).stem}-random-{seed}.json"
    if not path.is_file():
        raise SystemExit(f"--targets-from: {path} does not exist; write it with --trace-dir first")
    events = json.loads(path.read_text())[:budget]
    return best_so_far([e["score"] for e in events]), float("nan"), sum(e["epoch"] >= max_epochs for e in events)


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, best in enumerate(curve) if best >= target - 1e-12), None)


@dataclass
class Row:
    method: str
    finals: list[float]                     # best score per seed
    reach: list[int | None]                 # trial-epochs to random's final best, per seed (None: never)
    walls: list[float]                      # seconds per search
    full: list[int]                         # trials trained to max_epochs, per seed
    budget: int
    targets: list[float]                    # random search's final best, per seed

    @property
    def worst_share(self) -> float | None:
        return None if None in self.reach else max(self.reach) / self.budget

    @property
    def within_third(self) -> int:
        """Seeds on which random search's final best was reached within a third of the budget (the target)."""
        return sum(r is not None and 3 * r <= self.budget for r in self.reach)

    @property
    def median_reach(self) -> float | None:
        """The median over seeds of the trial-epochs to random search's final best (None: never, as on half
        the seeds or more). Unlike the worst seed, it is not set by random search's luckiest draw."""
        ordered = sorted(math.inf if r is None else r for r in self.reach)
        middle = statistics.median(ordered)
        return None if math.isinf(middle) else middle

    @property
    def at_least_random(self) -> int:
        """Seeds on which the final best is at least random search's."""
        return sum(f >= t - 1e-12 for f, t in zip(self.finals, self.targets))


def summarise(curves: dict[str, dict[int, list[float]]], walls: dict[str, dict[int, float]],
              full: dict[str, dict[int, int]], budget: int) -> list[Row]:
    rows = []
    for method, by_seed in curves.items():
        targets = {seed: curves["random"][seed][-1] for seed in by_seed}
        rows.append(Row(method, [c[-1] for c in by_seed.values()],
                        [epochs_to_reach(c, targets[seed]) for seed, c in by_seed.items()],
                        list(walls[method].values()), list(full[method].values()), budget, list(targets.values())))
    return rows


def table(space: str, rows: list[Row], args, images: tuple[int, int]) -> str:
    lines = [f"space {Path(space).stem}: {images[0]} training and {images[1]} validation images, budget {args.budget} "
             f"trial-epochs per search, seeds {' '.join(map(str, args.seeds))}", "",
             "| method | best val score (mean ± sd) | trial-epochs to random's final best, per seed | worst share "
             "of the budget | median trial-epochs to random's best | seeds within a third | seeds with final best ≥ "
             "random's | trials trained to max_epochs "
             "(mean) | wall s per search (mean) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sd = statistics.pstdev(r.finals)
        share = "never on some seed" if r.worst_share is None else f"{r.worst_share:.2f}"
        median = "never" if r.median_reach is None else f"{r.median_reach:g}"
        lines.append(f"| {r.method} | {statistics.mean(r.finals):.4f} ± {sd:.4f} | "
                     f"{', '.join('never' if x is None else str(x) for x in r.reach)} | {share} | {median} | "
                     f"{r.within_third} of {len(r.reach)} | {r.at_least_random} of {len(r.finals)} | "
                     f"{statistics.mean(r.full):.1f} | {wall_text(r.walls)} |")
    return "\n".join(lines)


def wall_text(walls: list[float]) -> str:
    mean = statistics.mean(walls)
    return "(read from a trace)" if math.isnan(mean) else f"{mean:.0f}"


def prepared_space(name: str, args) -> Space:
    space = load_space(name)
    overrides = dict(parse_override(o, space) for o in args.overrides)
    space.search = {k: v for k, v in space.search.items() if k not in overrides}
    space.fixed = {**space.fixed, **overrides}
    space.start = []    # no head start from a report's known best setting: every method samples from scratch
    if space.mode != "max":
        raise SystemExit(f"{name} minimises {space.metric}; this benchmark compares maximised scores")
    if args.max_epochs:
        space.max_epochs, space.grace_period = args.max_epochs, min(space.grace_period, args.max_epochs)
    return space


def bench_space(name: str, args, storage: str) -> tuple[list[Row], tuple[int, int]]:
    """The space's rows, and the training and validation images each trial had."""
    space = prepared_space(name, args)
    curves = {m: {} for m in args.methods}
    walls = {m: {} for m in args.methods}
    full = {m: {} for m in args.methods}
    for seed in args.seeds:
        data = prepare_trial_data(space.dataset, resolve_data_dir(args.data_dir), space.val_fraction, seed)
        data.train_idx = limit_indices(data.train_idx, data.labels, args.train_images, seed)
        data.val_idx = limit_indices(data.val_idx, data.labels, args.val_images, seed)
        if args.targets_from:
            curves["random"][seed], walls["random"][seed], full["random"][seed] = read_random(
                args.targets_from, name, seed, args.budget, space.max_epochs)
        for method in [m for m in args.methods if not (args.targets_from and m == "random")]:
            trace = Path(args.trace_dir) / f"{Path(name).stem}-{method}-{seed}.json" if args.trace_dir else None
            curves[method][seed], walls[method][seed], full[method][seed] = run_method(
                method, space, data, seed, args.budget, storage, trace, args.num_samples)
            print(f"  {Path(name).stem} seed {seed} {method}: best {curves[method][seed][-1]:.4f}, "
                  f"{walls[method][seed]:.0f} s", file=sys.stderr, flush=True)
    return summarise(curves, walls, full, args.budget), (len(data.train_idx), len(data.val_idx))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Help)
    p.add_argument("--spaces", nargs="+", default=SPACES, help="space names or files")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                   help="methods to compare; random is always run (it sets the target)")
    p.add_argument("--budget", type=int, default=60, help="trial-epochs each search may spend")
    p.add_argument("--num-samples", type=int,
                   help="trials per search, as a space's num_samples (default: enough to spend the budget: budget / "
                        "grace period, / max_epochs for FIFO; four times that for random search, whose networks the "
                        "space cannot build cost nothing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, help="override the spaces' max_epochs")
    p.add_argument("--train-images", type=int, default=2000, help="training images per trial (a stratified subset)")
    p.add_argument("--val-images", type=int,
                   help="validation images, a stratified subset (default: all of the split's, 6,000 on MNIST; on "
                        "2,000, one standard error of an accuracy near 0.95 is 0.0049, as large as the differences "
                        "between the best networks)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a setting in every space, as tuner.run --set")
    p.add_argument("--targets-from", metavar="DIR",
                   help="read random search's traces from DIR (an earlier run's --trace-dir) instead of running it: "
                        "the methods of this run are counted against that baseline (default: run random search)")
    p.add_argument("--data-dir", help="dataset folder (default: $TUNER_DATA_DIR, else ./data)")
    p.add_argument("--trace-dir", help="write every search's trial-epochs (trial, epoch, score, settings) here as "
                                       "JSON, one file per space, method and seed (default: none)")
    args = p.parse_args(argv)
    args.methods = ["random"] + [m for m in args.methods if m != "random"]
    return args


def main(argv=None) -> dict[str, list[Row]]:
    args = parse_args(argv)
    # The trials the budget left unstarted have no results; Ray lists each of them when the search ends.
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(DropNotices(("Failed to fetch metrics",)))
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, logging_level="WARNING")
    results = {}
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as storage:
        for name in args.spaces:
            results[name], images = bench_space(name, args, storage)
            print(table(name, results[name], args, images) + "\n", flush=True)
    if started:
        ray.shutdown()
    return results


if __name__ == "__main__":
    main()
