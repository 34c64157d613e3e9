"""Optuna's pruners as the search's scheduler (tuner.pruning): which trials they stop, what the study is told,
how a space picks one, and a real search stopped by one."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import optuna
import pytest

from tests.conftest import run_cli
from tests.test_search import runs_of, search_board
from tuner.analysis.budget import budget_section, rung_table
from tuner.analysis.trials import load_record
from tuner.pruning import OptunaPruning
from tuner.search import SearchOptions, effective_space, end_reason, make_scheduler, search_settings, trial_reporting
from tuner.spaces import load_space

CONTINUE, STOP = "CONTINUE", "STOP"


def median(**kwargs):
    return OptunaPruning("median", "val_accuracy", "max", **{"grace_period": 2, "reduction_factor": 3, "max_t": 5,
                                                             **kwargs})


def run(scheduler, name: str, scores: list[float]) -> list[str]:
    """One trial reports its epochs' scores in turn until told to stop; then it ends. What it was told."""
    trial, said = SimpleNamespace(trial_id=name), []
    for epoch, score in enumerate(scores, 1):
        result = {"epoch": epoch, "val_accuracy": score}
        said.append(scheduler.on_trial_result(None, trial, result))
        if said[-1] == STOP:
            break
    scheduler.on_trial_complete(None, trial, result)
    return said


def finished_five(scheduler):
    for i in range(5):                     # five trials at 0.5 to 0.9 run to the end: the median's reference
        assert run(scheduler, f"done{i}", [0.5 + i / 10] * 5) == [CONTINUE] * 5


def test_the_median_pruner_stops_a_trial_below_the_finished_trials_median_from_the_grace_period_on():
    scheduler = median()
    assert run(scheduler, "early", [0.2] * 5) == [CONTINUE] * 5        # nothing finished yet: nobody is stopped
    finished_five(scheduler)
    assert run(scheduler, "weak", [0.2, 0.3, 0.4]) == [CONTINUE, STOP]      # epoch 1 is before the grace period
    assert run(scheduler, "strong", [0.75] * 5) == [CONTINUE] * 5            # above the median (0.7) at each epoch
    states = {t.number: t.state for t in scheduler._study.get_trials()}
    assert list(states.values()).count(optuna.trial.TrialState.PRUNED) == 1
    assert scheduler._study.best_value == pytest.approx(0.9)               # a complete trial's best epoch


def test_a_trial_at_chance_is_stopped_and_one_that_never_trained_is_left_out_of_the_study():
    scheduler = median(floor=0.15)
    assert run(scheduler, "still", [0.1, 0.1, 0.1]) == [CONTINUE, STOP]     # at chance from the grace period on
    scheduler.on_trial_complete(None, SimpleNamespace(trial_id="unbuilt"), {"end_reason": "invalid architecture"})
    assert [t.state.name for t in scheduler._study.get_trials()] == ["PRUNED"]
    assert "unbuilt" in scheduler._ended and "unbuilt" not in scheduler._trials    # no epoch, no Optuna trial


def test_a_trial_retried_after_a_crash_is_still_judged_and_one_that_fails_for_good_is_told_failed():
    scheduler = median(floor=0.15)
    retried = SimpleNamespace(trial_id="retried", should_recover=lambda: True)      # within --max-failures
    assert scheduler.on_trial_result(None, retried, {"epoch": 1, "val_accuracy": 0.5}) == CONTINUE
    scheduler.on_trial_error(None, retried)
    scheduler.on_trial_add(None, retried)
    assert scheduler.on_trial_result(None, retried, {"epoch": 2, "val_accuracy": 0.1}) == STOP   # at chance
    lost = SimpleNamespace(trial_id="lost", should_recover=lambda: False)
    scheduler.on_trial_result(None, lost, {"epoch": 1, "val_accuracy": 0.5})
    scheduler.on_trial_error(None, lost)
    assert [t.state.name for t in scheduler._study.get_trials()] == ["RUNNING", "FAIL"]


def test_the_pruners_record_survives_a_restore():
    scheduler = median()
    finished_five(scheduler)
    trial = SimpleNamespace(trial_id="running")
    assert scheduler.on_trial_result(None, trial, {"epoch": 1, "val_accuracy": 0.3}) == CONTINUE
    fresh = median()                                            # as Tuner.restore brings the scheduler back
    fresh.restore_state(pickle.loads(pickle.dumps(scheduler.saved_state())))
    # The running trial goes on in the restored study: its next epoch, below the median, is stopped.
    assert fresh.on_trial_result(None, trial, {"epoch": 2, "val_accuracy": 0.35}) == STOP
    assert median().on_trial_result(None, trial, {"epoch": 2, "val_accuracy": 0.35}) == CONTINUE   # empty record


def test_the_hyperband_pruner_stops_worse_trials_at_its_brackets_rungs():
    scheduler = OptunaPruning("hyperband", "val_accuracy", "max", grace_period=1, reduction_factor=3, max_t=9)
    lengths = [len(run(scheduler, f"t{i}", [0.9 - i / 100] * 9)) for i in range(30)]   # each worse than the last
    assert lengths[0] == 9 and min(lengths) < 9
    assert set(lengths) <= {1, 3, 9}                   # stopped only at rungs grace * 3**k


def space_with(tmp_path, scheduler_text: str, name="mine"):
    path = tmp_path / f"{name}.yaml"
    path.write_text("description: d\ndataset: digits\nmodel: convnet\nsearch:\n  lr: {loguniform: [1.0e-4, 1.0e-1]}\n"
                    f"scheduler: {scheduler_text}\n")
    return path


def test_a_space_picks_an_optuna_pruner_and_the_search_follows_it(tmp_path):
    space = load_space(str(space_with(tmp_path, "{max_epochs: 6, grace_period: 2, pruner: median}")))
    opts = SearchOptions("x", str(tmp_path), space.num_samples, space.max_epochs, 1, 0)
    eff = effective_space(space, opts)
    assert isinstance(make_scheduler(eff), OptunaPruning) and trial_reporting(eff).due(3, 0.0)   # every epoch
    settings = search_settings(eff, opts)
    assert settings["scheduler"] == "OptunaPruning (MedianPruner)" and settings["pruner"] == "median"
    assert end_reason(None, {"epoch": 3}, 2, 3, 6, by="Optuna's MedianPruner") == \
        "stopped by Optuna's MedianPruner at epoch 3"


@pytest.mark.parametrize("scheduler_text, says", [
    ("{pruner: percentile}", "scheduler.pruner: 'percentile' is not allowed; use one of: asha, median, hyperband"),
    ("{pruner: median, quorum: true}", "scheduler.pruner: quorum and brackets are ASHA's"),
])
def test_a_wrong_pruner_is_one_line_naming_the_key(tmp_path, scheduler_text, says):
    code, _, err = run_cli("--space", str(space_with(tmp_path, scheduler_text)), "--smoke", cwd=tmp_path)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_search_stopped_by_the_median_pruner_says_so_in_its_leaderboard_and_runs(ray_session, tmp_path):
    # Five networks that learn set the median; then one that learns slowly (lr 1e-4) and one that learns
    # nothing. One trial at a time, so that the five have finished before the others start.
    good = "".join(f"  - {{lr: {lr}}}\n" for lr in (0.01, 0.012, 0.014, 0.016, 0.018))
    board = search_board(tmp_path, "pruned", "description: median pruner\nsearch:\n  lr: {loguniform: [1.0e-9, 0.1]}\n"
                         f"start:\n{good}  - {{lr: 1.0e-4}}\n  - {{lr: 1.0e-9}}\n"
                         "scheduler: {max_epochs: 4, grace_period: 2, pruner: median}\nnum_samples: 7\n",
                         "--max-concurrent", "1").set_index("lr")
    assert (board.loc[[0.01, 0.012, 0.014, 0.016, 0.018], "end_reason"] == "completed").all()
    assert board.loc[1e-4, "end_reason"] == "stopped by Optuna's MedianPruner at epoch 2"
    assert board.loc[1e-9, "end_reason"].startswith("stopped by Optuna's MedianPruner at chance level at epoch 2")
    client, parents, children = runs_of(tmp_path / "mlflow.db", "pruned")
    reasons = {float(c.data.params["lr"]): c.data.tags["tuner.end_reason"] for c in children}
    assert reasons[1e-4] == board.loc[1e-4, "end_reason"]
    record = load_record(client, parents[0], children)          # the search report names the pruner too
    stops = rung_table(record)["stopped by Optuna's MedianPruner"]
    assert record.settings.stopper == "Optuna's MedianPruner" and stops.sum() == 2 and stops.iloc[0] == 2
    assert sum(budget_section(record, tmp_path).facts["stopped_per_rung"].values()) == 2   # the report's section


def test_the_search_report_counts_a_pruners_stops_as_stops():
    from tuner.analysis.trials import outcome

    assert outcome("stopped by Optuna's MedianPruner at epoch 3") == outcome("stopped by ASHA at epoch 2") == "stopped"
    assert outcome("stopped before its first epoch") == "unfinished"          # not a scheduler's stop
