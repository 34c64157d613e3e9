"""tuner.sampling: the start-up design (a Latin hypercube queued in the searcher's Optuna study) and
random trials interleaved with TPE's."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.errors import UserError
from tuner.sampling import InterleavedSampler, SearcherSettings, latin_hypercube, make_sampler
from tuner.search import SearchOptions, effective_space, make_searcher, search_settings
from tuner.spaces import find_space, load_space

DISTRIBUTIONS = {
    "kernel": CategoricalDistribution([3, 5, 7]),
    "lr": FloatDistribution(1e-6, 1.0, log=True),
    "dropout": FloatDistribution(0.0, 0.9),
    "depth": IntDistribution(1, 5),
    "step": FloatDistribution(0.0, 1.0, step=0.25),
}


def test_every_setting_takes_each_of_n_slices_of_its_range_once():
    points = latin_hypercube(DISTRIBUTIONS, 12, seed=0)
    assert len(points) == 12
    assert Counter(p["kernel"] for p in points) == {3: 4, 5: 4, 7: 4}        # each choice equally often
    assert Counter(p["depth"] for p in points).most_common()[-1][1] >= 2      # 12 over 5 values: 2 or 3 each
    lr_slices = sorted(math.floor(math.log(p["lr"] / 1e-6) / math.log(1e6) * 12) for p in points)
    assert lr_slices == list(range(12))                                       # slices of the log range
    assert sorted(math.floor(p["dropout"] / 0.9 * 12) for p in points) == list(range(12))
    for point in points:
        for name, dist in DISTRIBUTIONS.items():
            assert dist._contains(dist.to_internal_repr(point[name])), (name, point[name])
    assert {p["step"] for p in points} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert latin_hypercube(DISTRIBUTIONS, 12, seed=0) == points
    assert latin_hypercube(DISTRIBUTIONS, 12, seed=1) != points


def searcher_for(tmp_path, section: str, start: str = ""):
    path = tmp_path / "mine.yaml"
    path.write_text(Path(find_space("quickstart")).read_text() + section + start)
    space = load_space(str(path))
    opts = SearchOptions("x", str(tmp_path), space.num_samples, space.max_epochs, 1, 0)
    eff = effective_space(space, opts)
    searcher = make_searcher(eff, opts)
    searcher.set_search_properties(eff.metric, eff.mode, eff.param_space())
    return searcher, search_settings(eff, opts)


def test_a_latin_hypercube_start_is_what_the_first_trials_run(tmp_path):
    searcher, settings = searcher_for(tmp_path, "searcher: {startup_design: latin_hypercube, startup_trials: 6}\n")
    assert settings["startup_design"] == "latin_hypercube" and settings["startup_trials"] == 6
    configs = [searcher.suggest(f"t{i}") for i in range(7)]
    assert Counter(c["kernel_size"] for c in configs[:6]) == {3: 3, 5: 3}
    assert Counter(c["batch_norm"] for c in configs[:6]) == {True: 3, False: 3}
    assert sorted(math.floor(math.log(c["lr"] / 1e-4) / math.log(300) * 6) for c in configs[:6]) == list(range(6))
    # Points a space starts from come first and count among the start-up trials.
    start = "start:\n  - {lr: 0.001, depth: 2, width: 16, growth: flat, kernel_size: 3, batch_norm: true, " \
            "dropout: 0.1, weight_decay: 1.0e-5}\n"
    searcher, _ = searcher_for(tmp_path, "searcher: {startup_design: latin_hypercube, startup_trials: 6}\n", start)
    waiting = [t for t in searcher._ot_study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert len(waiting) == 6 and searcher.suggest("first")["lr"] == 0.001


def test_the_default_start_is_optunas_own_random_draws(tmp_path):
    searcher, settings = searcher_for(tmp_path, "")
    assert settings["startup_design"] == "random" and not searcher._ot_study.get_trials(deepcopy=False)


def test_an_unknown_design_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(Path(find_space("quickstart")).read_text() + "searcher: {startup_design: sobol}\n")
    with pytest.raises(UserError, match=r"searcher.startup_design: 'sobol' is not allowed; use one of: random, "):
        load_space(str(path))


def best_at_two(trial) -> float:
    """Best at k = 2 and x = 0.1: TPE, once it has seen that, draws k = 2 nearly always."""
    x, k = trial.suggest_float("x", 0.0, 1.0), trial.suggest_categorical("k", [1, 2, 3, 4, 5])
    return -abs(x - 0.1) - (k != 2)


def study_with(random_fraction: float, trials: int = 45) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(SearcherSettings(startup_trials=5, random_fraction=random_fraction), 0, trials)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(best_at_two, n_trials=trials)
    return study


def test_a_random_fraction_draws_every_third_trial_at_random_and_tpe_the_rest():
    study = study_with(1 / 3)
    sampler = study.sampler
    assert isinstance(sampler, InterleavedSampler)
    after_start = study.trials[5:]
    drawn = [t for t in after_start if sampler.is_random(t)]
    modelled = [t for t in after_start if not sampler.is_random(t)]
    assert [t.number for t in drawn] == list(range(5, 45, 3))                  # trials 5, 8, 11, ...: one in three
    # TPE's own trials favour k = 2 (0.73 of them); the interleaved draws spread over all five values
    # (0.29 at k = 2, where a fifth is uniform).
    share = {name: sum(t.params["k"] == 2 for t in trials) / len(trials)
             for name, trials in (("modelled", modelled), ("drawn", drawn))}
    assert share["modelled"] > 2 * share["drawn"], share
    assert len({t.params["k"] for t in drawn}) == 5
    assert not isinstance(study_with(0.0, trials=6).sampler, InterleavedSampler)    # 0: TPE alone
    # A search's saved state pickles the sampler with the study; a restored one goes on drawing.
    restored = pickle.loads(pickle.dumps(study))
    restored.optimize(best_at_two, n_trials=3)
    assert len(restored.trials) == 48


def test_a_space_sets_the_random_fraction_and_the_run_records_it(tmp_path):
    searcher, settings = searcher_for(tmp_path, "searcher: {random_fraction: 0.25}\n")
    assert settings["random_fraction"] == 0.25
    assert isinstance(searcher._ot_study.sampler, InterleavedSampler)
    path = tmp_path / "bad.yaml"
    path.write_text(Path(find_space("quickstart")).read_text() + "searcher: {random_fraction: 1.5}\n")
    with pytest.raises(UserError, match=r"searcher.random_fraction: 1.5 is out of range: random_fraction must be in"):
        load_space(str(path))


def test_the_largest_seed_does_not_overflow_the_random_draws_seed():
    sampler = make_sampler(SearcherSettings(random_fraction=0.5), 2**32 - 1, 10)   # --seed's top: seed + 1 wraps
    assert isinstance(sampler, InterleavedSampler)
