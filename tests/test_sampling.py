"""The start-up design of tuner.sampling: a Latin hypercube queued in the searcher's Optuna study."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.errors import UserError
from tuner.sampling import latin_hypercube
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
