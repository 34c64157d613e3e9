"""The quorum rule of tuner.asha beside Ray's ASHA: which trials go on past a rung."""

import pickle
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler

from tuner.asha import QuorumASHA


def decisions(scheduler, scores, epoch=1):
    """Each trial reports ``epoch`` with its score, in order; what the scheduler said to each."""
    said = []
    for i, score in enumerate(scores):
        trial = SimpleNamespace(trial_id=f"t{i}")
        if trial.trial_id not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
        said.append(scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": score}))
    return said


def make(kind):
    return kind(time_attr="epoch", metric="val_accuracy", mode="max", max_t=9, grace_period=1, reduction_factor=3)


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
    assert type(make_scheduler(plain)) is ASHAScheduler and search_settings(plain, opts)["quorum"] is False
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
