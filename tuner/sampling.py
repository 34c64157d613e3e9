"""How Optuna picks the next trial: a space's ``searcher:`` section and the sampler built from it.

The defaults are the TPE settings that measured best (BENCHMARKS.md, section 2, on report 003's MNIST space
and on a space where most of the volume is bad); every other value is an option a space can set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from tuner.checker import SpaceChecker

STOPPED = ("pruned", "value")   # how a trial ASHA stopped is told to the sampler
SAMPLER_CLASSES = {"tpe": "TPESampler", "gp": "GPSampler"}   # GP: Gaussian-process Bayesian optimisation
SAMPLERS = tuple(SAMPLER_CLASSES)
DESIGNS = ("random", "latin_hypercube")   # how the start-up trials are drawn
SEARCHER_KEYS = ("sampler", "multivariate", "constant_liar", "startup_trials", "startup_design", "random_fraction",
                 "stopped")


@dataclass(frozen=True)
class SearcherSettings:
    # "gp" fits a Gaussian process to the results instead of TPE's densities; it learns only from COMPLETE
    # trials, so with ASHA it needs ``stopped: value``. multivariate and constant_liar are TPE's alone.
    sampler: str = "tpe"
    # True: one joint density over all settings instead of one per setting, which could model interactions
    # (a deep stack with a large stride leaves no map). Optuna 5's default, but with the tens of trials a
    # search has, per-setting densities found better settings on both benchmark spaces.
    multivariate: bool = False
    # True: trials still running count as bad results while the next one is sampled, so trials started
    # together spread out. Measured together with multivariate (Optuna 5 turns both on): off is better.
    constant_liar: bool = False
    # Random trials before TPE models the results; None: a quarter of num_samples, 3 to 10.
    startup_trials: int | None = None
    # "latin_hypercube": the start-up trials cut each setting's range into as many equal slices (of its log
    # range where the distribution is log) and take each slice once, so every value of a choice is tried
    # about equally often before TPE models the results; "random": independent draws, as Optuna does.
    startup_design: str = "random"
    # After the start-up, this share of the trials is drawn at random instead of from TPE's model (every
    # third one at 1/3, as BOHB does): TPE alone, once it has found a good region, samples only near it.
    random_fraction: float = 0.0
    # "pruned": a trial ASHA stopped ranks below every trial that ran to the end (by how far it got, then
    # its score); "value": it counts as complete with the best score it reached before the stop.
    stopped: str = "pruned"

    def startup(self, num_samples: int) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return min(10, max(3, num_samples // 4))

    def describe(self, num_samples: int) -> dict:
        """The settings as the search run's params record them, start-up trials resolved."""
        return {**asdict(self), "startup_trials": self.startup(num_samples)}


def check_searcher(section: dict, c: SpaceChecker) -> SearcherSettings:
    """``searcher:`` from a space file, checked by the space's checker (one line naming the file and key)."""
    for key in section:
        if key not in SEARCHER_KEYS:
            c.fail(f"searcher.{key}", f"unknown key; allowed: {', '.join(SEARCHER_KEYS)}")
    out = {key: c.switch(f"searcher.{key}", section[key])
           for key in ("multivariate", "constant_liar") if key in section}
    if section.get("startup_trials") is not None:
        key = "searcher.startup_trials"
        out["startup_trials"] = c.in_range(key, "startup_trials", c.number(key, section["startup_trials"], int))
    if section.get("random_fraction") is not None:
        key = "searcher.random_fraction"
        out["random_fraction"] = c.in_range(key, "random_fraction", c.number(key, section["random_fraction"]))
    for key, allowed in (("stopped", STOPPED), ("sampler", SAMPLERS), ("startup_design", DESIGNS)):
        if key in section:
            out[key] = c.one_of(f"searcher.{key}", section[key], allowed)
    return SearcherSettings(**out)


def make_sampler(settings: SearcherSettings, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """Optuna's TPE or GP with the space's settings, every ``1/random_fraction``-th trial drawn at random.
    Every trial samples every setting (Ray passes the space as one flat set of distributions), so TPE's
    ``group`` option would change nothing and is not offered."""
    if settings.sampler == "gp":
        model = optuna.samplers.GPSampler(seed=seed, n_startup_trials=settings.startup(num_samples),
                                          warn_independent_sampling=False)
    else:
        model = optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup(num_samples),
                                           multivariate=settings.multivariate, constant_liar=settings.constant_liar)
    return InterleavedSampler(model, settings.random_fraction, seed) if settings.random_fraction else model


class InterleavedSampler(optuna.samplers.BaseSampler):
    """``model`` (TPE or GP), except that a ``fraction`` of the trials, spread evenly over trial numbers,
    are drawn by Optuna's RandomSampler: random interleaving, as BOHB mixes a third of random
    configurations into its model's. The model still learns from every trial's result."""

    def __init__(self, model: optuna.samplers.BaseSampler, fraction: float, seed: int | None):
        self._model, self._fraction = model, fraction
        # Another seed than the model's own random sampler (its start-up draws), so the draws differ.
        self._random = optuna.samplers.RandomSampler(seed=None if seed is None else (seed + 1) % 2**32)

    def is_random(self, trial: optuna.trial.FrozenTrial) -> bool:
        n = trial.number      # numbers n where floor((n + 1) * fraction) steps up: every third at 1/3
        return math.floor((n + 1) * self._fraction) > math.floor(n * self._fraction)

    def infer_relative_search_space(self, study, trial):
        return {} if self.is_random(trial) else self._model.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if self.is_random(trial) else self._model.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        sampler = self._random if self.is_random(trial) else self._model
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._model.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._model.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._model.reseed_rng()
        self._random.reseed_rng()


def latin_hypercube(distributions: dict[str, BaseDistribution], n: int, seed: int) -> list[dict]:
    """``n`` settings (Optuna distributions by name) that take each of ``n`` equal slices of every setting's
    unit range once, in an independent random order per setting (McKay et al.'s Latin hypercube)."""
    rng = np.random.default_rng(seed)
    points = [{} for _ in range(n)]
    for name, dist in distributions.items():
        for point, u in zip(points, (rng.permutation(n) + rng.random(n)) / n):
            point[name] = from_unit(dist, float(u))
    return points


def from_unit(dist: BaseDistribution, u: float):
    """The value at ``u`` in [0, 1) of ``dist``'s range: uniform in the value, or in its log where ``log``."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    low, high, step = dist.low, dist.high, dist.step
    if isinstance(dist, IntDistribution):
        if dist.log:
            value = math.floor(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low))))
        else:
            value = low + step * int(u * ((high - low) // step + 1))
        return int(min(max(value, low), high))
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if dist.log else low + u * (high - low)
    if step:
        value = low + round((value - low) / step) * step
    return float(min(max(value, low), high))
