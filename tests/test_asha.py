"""The quorum and chance-floor rules of tuner.asha beside Ray's ASHA: which trials go on past a rung."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import math

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler

from tuner.asha import ChanceFloorASHA, QuorumASHA, chance_floor


def decisions(scheduler, scores, epoch=1, metric="val_accuracy"):
    """Each trial reports ``epoch`` with its score, in order; what the scheduler said to each."""
    said = []
    for i, score in enumerate(scores):
        trial = SimpleNamespace(trial_id=f"t{i}")
        if trial.trial_id not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
        said.append(scheduler.on_trial_result(None, trial, {"epoch": epoch, metric: score}))
    return said


def make(kind, **kwargs):
    return kind(**{"time_attr": "epoch", "metric": "val_accuracy", "mode": "max", "max_t": 9, "grace_period": 1,
                   "reduction_factor": 3, **kwargs})


def test_a_rung_promotes_nobody_before_it_has_seen_reduction_factor_trials_then_only_their_top_third():
    scores = [0.30, 0.20, 0.10, 0.95, 0.15, 0.97]
    # Ray's ASHA: the first trial at the rung goes on with nothing to compare it with.
    assert decisions(make(ASHAScheduler), scores) == ["CONTINUE", "STOP", "STOP", "CONTINUE", "STOP", "CONTINUE"]
    assert decisions(make(QuorumASHA), scores) == ["STOP", "STOP", "STOP", "CONTINUE", "STOP", "CONTINUE"]
    # The third goes on if it is the best of three (the top third), whatever its score.
    assert decisions(make(QuorumASHA), [0.11, 0.10, 0.12]) == ["STOP", "STOP", "CONTINUE"]


def test_the_quorum_holds_at_every_rung_and_survives_pickling_as_a_restore_does():
    scheduler = pickle.loads(pickle.dumps(make(QuorumASHA)))
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [9, 3, 1]
    for i in range(6):                                   # six trials past the first rung's quorum
        scheduler._brackets[0]._rungs[2][1][f"r{i}"] = 0.1
    assert decisions(scheduler, [0.9, 0.8, 0.7, 0.85], epoch=3) == ["STOP", "STOP", "STOP", "CONTINUE"]


def test_a_space_turns_the_quorum_on_and_the_search_records_it(tmp_path):
    from tuner.search import SearchOptions, effective_space, make_scheduler, search_settings
    from tuner.spaces import find_space, load_space

    path = tmp_path / "mine.yaml"
    path.write_text(Path(find_space("quickstart")).read_text().replace("scheduler: {", "scheduler: {quorum: true, "))
    space = load_space(str(path))
    opts = SearchOptions("x", str(tmp_path), space.num_samples, space.max_epochs, 1, 0)
    eff = effective_space(space, opts)
    assert isinstance(make_scheduler(eff), QuorumASHA) and search_settings(eff, opts)["quorum"] is True
    assert search_settings(eff, opts)["quorum_epochs"] == [2, 6]      # 24 trials cannot fill epoch 18's rung
    plain = effective_space(load_space("quickstart"), opts)
    assert type(make_scheduler(plain)) is ChanceFloorASHA and search_settings(plain, opts)["quorum"] is False
    assert search_settings(plain, opts)["quorum_epochs"] == []


def test_the_quorum_holds_only_at_the_rungs_a_search_of_its_size_fills():
    # 24 trials, grace 2, factor 3, max 20: about 24, 8 and 2.7 trials reach epochs 2, 6 and 18.
    small = QuorumASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=20, grace_period=2,
                       reduction_factor=3, num_samples=24)
    assert sorted(small._brackets[0].quorum_milestones) == [2, 6]
    # At epoch 18 Ray's rule decides: the first trial there goes on, as the trials reaching it are few.
    assert decisions(small, [0.9, 0.8], epoch=18) == ["CONTINUE", "STOP"]
    assert decisions(small, [0.9, 0.8], epoch=6) == ["STOP", "STOP"]
    large = QuorumASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=20, grace_period=2,
                       reduction_factor=3, num_samples=200)
    assert sorted(large._brackets[0].quorum_milestones) == [2, 6, 18]
    assert decisions(large, [0.9, 0.8], epoch=18) == ["STOP", "STOP"]


@pytest.mark.parametrize("max_t,brackets", [(20, 4), (1, 2)])     # (1, 2): a --smoke search of two brackets
def test_a_bracket_without_rungs_has_no_quorum(max_t, brackets):
    scheduler = QuorumASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=max_t,
                           grace_period=min(2, max_t), reduction_factor=3, brackets=brackets, num_samples=24)
    empty = [b for b in scheduler._brackets if not b._rungs]
    assert empty and all(b.quorum_milestones == frozenset() for b in empty)


def test_chance_is_the_commonest_class_share_or_the_loss_of_predicting_class_frequencies():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    se = math.sqrt(0.6 * 0.4 / 1000)
    assert chance_floor(labels, "val_accuracy") == pytest.approx(0.6 + 3 * se)
    balanced = np.repeat(np.arange(10), 100)          # every image's loss is ln 10: no spread, no margin
    assert chance_floor(balanced, "val_loss") == pytest.approx(math.log(10))
    shares = (0.6, 0.3, 0.1)
    entropy = -sum(p * math.log(p) for p in shares)
    spread = math.sqrt(sum(p * (-math.log(p) - entropy) ** 2 for p in shares))
    assert chance_floor(labels, "val_loss") == pytest.approx(entropy - 3 * spread / math.sqrt(1000))
    assert chance_floor(labels, "train_accuracy") is None and chance_floor(labels, "train_loss") is None


def test_a_trial_at_chance_is_stopped_from_the_grace_period_on_and_left_out_of_the_rung():
    scheduler = make(ChanceFloorASHA, floor=0.13)
    # At epoch 1 (the grace period) two networks at chance level stop; the first network that learned is
    # then the first at the rung and goes on, where Ray's ASHA would rank it against the two at chance.
    assert decisions(scheduler, [0.11, 0.12, 0.60, 0.40, 0.65]) == ["STOP", "STOP", "CONTINUE", "STOP", "CONTINUE"]
    assert sorted(scheduler._brackets[0]._rungs[-1][1].values()) == [0.40, 0.60, 0.65]
    assert decisions(make(ASHAScheduler), [0.11, 0.12, 0.60, 0.40, 0.65]) == [
        "CONTINUE", "CONTINUE", "CONTINUE", "CONTINUE", "CONTINUE"]
    # Ending a stopped trial records nothing at the rung either (Ray's ASHA records the final result).
    trial = SimpleNamespace(trial_id="t0")
    scheduler.on_trial_complete(None, trial, {"epoch": 1, "val_accuracy": 0.11})
    assert len(scheduler._brackets[0]._rungs[-1][1]) == 3 and "t0" not in scheduler._trial_info
    # Before the grace period nothing is stopped for being at chance; past it, a trial that falls back is.
    late = make(ChanceFloorASHA, floor=0.13, grace_period=2)
    assert decisions(late, [0.10], epoch=1) == ["CONTINUE"]
    assert decisions(late, [0.10], epoch=4) == ["STOP"]


def test_the_floor_works_on_a_loss_and_in_the_quorum_scheduler():
    loss = ChanceFloorASHA(time_attr="epoch", metric="val_loss", mode="min", max_t=9, grace_period=1,
                           reduction_factor=3, floor=2.25)
    assert decisions(loss, [2.30, 0.9, 2.26], metric="val_loss") == ["STOP", "CONTINUE", "STOP"]
    quorum = pickle.loads(pickle.dumps(make(QuorumASHA, floor=0.13)))
    assert decisions(quorum, [0.11, 0.5, 0.6, 0.7]) == ["STOP", "STOP", "STOP", "CONTINUE"]


def test_the_search_sets_the_floor_from_its_validation_labels_unless_the_space_turns_it_off(tmp_path):
    from tuner.data import TrialData
    from tuner.search import SearchOptions, effective_space, make_scheduler, search_settings
    from tuner.spaces import find_space, load_space

    labels = np.array([0, 1] * 500 + [2] * 1000)
    data = TrialData("toy", np.zeros((2000, 1, 4, 4), np.uint8), labels, np.arange(1000), np.arange(1000, 2000),
                     ["a", "b", "c"], (0.5,), (0.25,))
    opts = SearchOptions("x", str(tmp_path), 4, 2, 1, 0)
    space = effective_space(load_space("quickstart"), opts)
    assert make_scheduler(space, data)._floor == pytest.approx(1.0)   # validation images are all class 2
    assert make_scheduler(space)._floor is None and search_settings(space, opts)["stop_at_chance"] is True
    path = tmp_path / "off.yaml"
    text = Path(find_space("quickstart")).read_text()
    path.write_text(text.replace("scheduler: {", "scheduler: {stop_at_chance: false, "))
    off = effective_space(load_space(str(path)), opts)
    assert make_scheduler(off, data)._floor is None and search_settings(off, opts)["stop_at_chance"] is False


def test_a_trial_stopped_at_chance_says_so_in_its_end_reason():
    from tuner.asha import Floor
    from tuner.search import end_reason

    floor = Floor("val_accuracy", "max", 0.1245)
    at_chance = {"epoch": 2, "val_accuracy": 0.1100}
    assert end_reason(None, at_chance, 2, 3, 10, floor) == (
        "stopped by ASHA at chance level at epoch 2 (val_accuracy 0.1100, chance floor 0.1245)")
    assert end_reason(None, at_chance, 2, 3, 10) == "stopped by ASHA at epoch 2 (rung 0)"        # no floor given
    learned = {**at_chance, "val_accuracy": 0.6}
    assert end_reason(None, learned, 2, 3, 10, floor) == "stopped by ASHA at epoch 2 (rung 0)"
    assert end_reason(None, {**at_chance, "epoch": 1}, 2, 3, 10, floor) == "stopped by ASHA at epoch 1"  # before grace
    assert end_reason(None, {**at_chance, "epoch": 10}, 2, 3, 10, floor) == "completed"
    loss = Floor("val_loss", "min", 2.25)
    assert end_reason(None, {"epoch": 1, "val_loss": 2.3}, 1, 3, 9, loss).startswith("stopped by ASHA at chance level")
    assert end_reason(None, {"epoch": 1, "val_loss": 0.9}, 1, 3, 9, loss) == "stopped by ASHA at epoch 1 (rung 0)"
