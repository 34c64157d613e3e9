"""How Optuna picks the next trial: a space's ``searcher:`` section and the sampler built from it.

The defaults are the TPE settings that measured best (BENCHMARKS.md, section 2, on report 003's MNIST space
and on a space where most of the volume is bad); every other value is an option a space can set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import optuna

STOPPED = ("pruned", "value")   # how a trial ASHA stopped is told to the sampler
SAMPLERS = ("tpe", "gp")         # Optuna's TPESampler, or its GPSampler (Gaussian-process Bayesian optimisation)
SEARCHER_KEYS = ("sampler", "multivariate", "constant_liar", "startup_trials", "stopped")


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


def check_searcher(section: dict, fail, number, one_of) -> SearcherSettings:
    """``searcher:`` from a space file; ``fail``, ``number`` and ``one_of`` are the space checker's (one
    line naming the file and the key)."""
    for key in section:
        if key not in SEARCHER_KEYS:
            fail(f"searcher.{key}", f"unknown key; allowed: {', '.join(SEARCHER_KEYS)}")
    out = {}
    for key in ("multivariate", "constant_liar"):
        if key in section:
            if not isinstance(section[key], bool):
                fail(f"searcher.{key}", f"{section[key]!r} is not allowed; use true or false")
            out[key] = section[key]
    if section.get("startup_trials") is not None:
        out["startup_trials"] = number("searcher.startup_trials", section["startup_trials"])
    if "stopped" in section:
        out["stopped"] = one_of("searcher.stopped", section["stopped"], STOPPED)
    if "sampler" in section:
        out["sampler"] = one_of("searcher.sampler", section["sampler"], SAMPLERS)
    return SearcherSettings(**out)


def make_sampler(settings: SearcherSettings, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """Optuna's TPE or GP with the space's settings. Every trial samples every setting (Ray passes the space
    as one flat set of distributions), so TPE's ``group`` option would change nothing and is not offered."""
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=settings.startup(num_samples),
                                         warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup(num_samples),
                                      multivariate=settings.multivariate, constant_liar=settings.constant_liar)
