"""What a search prints: one progress line from Ray Tune's trials (counts, best, estimate), the libraries'
notices that call for no action filtered out, ``--verbose`` for Ray's status table; a search ends promptly
and leaves a Ray it did not start running."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from ray.tune.experiment import Trial

from tests.conftest import run_cli, search_args
from tuner.console import (SearchProgress, asha_expected_epochs, asha_milestones, clock, progress_line,
                           quiet_libraries, tally)

QUICKSTART_ASHA = (2, 3, 20)   # grace period, reduction factor, max epochs


def trial(trial_id: str, status: str, scores: list[float], **last) -> Trial:
    """A Ray Tune trial that has reported ``scores`` as val_accuracy, one per epoch."""
    t = Trial("train_trial", config={}, trial_id=trial_id, stub=True)
    for epoch, score in enumerate(scores, 1):
        t.update_last_result({"epoch": epoch, "val_accuracy": score, "training_iteration": epoch,
                              **(last if epoch == len(scores) else {})})
    if not scores and last:
        t.update_last_result({"epoch": 0, "val_accuracy": 0.0, "training_iteration": 1, **last})
    t.set_status(status)
    return t


def search_of_seven() -> list[Trial]:
    return [trial("done1", Trial.TERMINATED, [0.5, 0.9, 0.8] + [0.85] * 17, end_reason="completed"),
            trial("asha1", Trial.TERMINATED, [0.4, 0.6]),                              # stopped at rung 0
            trial("pat1", Trial.TERMINATED, [0.7, 0.6, 0.6], end_reason="early-stopped by patience 2 at epoch 3"),
            trial("bad1", Trial.TERMINATED, [], end_reason="invalid architecture: map shrinks below 1x1"),
            trial("err1", Trial.ERROR, [0.3]),
            trial("run1", Trial.RUNNING, [0.7, 0.95, 0.93, 0.94, 0.95, 0.96, 0.97]),
            trial("wait1", Trial.PENDING, [])]


def test_clock():
    assert [clock(s) for s in (0, 59.6, 75, 3725)] == ["0:00", "1:00", "1:15", "1:02:05"]


def test_asha_expectation_follows_its_milestones():
    assert asha_milestones(*QUICKSTART_ASHA) == [2, 6, 18, 20]
    # every trial runs 2 epochs, a third goes on to 6, a ninth to 18, a 27th to 20
    assert asha_expected_epochs(QUICKSTART_ASHA) == pytest.approx(2 + 4 / 3 + 12 / 9 + 2 / 27)
    assert asha_expected_epochs(QUICKSTART_ASHA, reached=7) == pytest.approx(18 + 2 / 3)   # past rung 1
    assert asha_expected_epochs(QUICKSTART_ASHA, reached=20) == 20
    assert asha_expected_epochs((5, 3, 3)) == 3 and asha_expected_epochs((1, 3, 1)) == 1


def test_trials_are_counted_by_how_they_ended_and_the_best_is_the_best_epoch_of_any():
    t = tally(search_of_seven(), total=10, metric="val_accuracy", mode="max", asha=QUICKSTART_ASHA)
    assert t.counts == {"running": 1, "pending": 4, "completed": 1, "stopped": 2, "invalid": 1, "diverged": 0,
                        "failed": 1}
    assert t.best == (0.97, "run1")
    assert t.epochs_done == 20 + 2 + 3 + 0 + 1 + 7
    # finished trials' epochs (26 over 5) shrunk towards ASHA's 4.74, for the 4 to come; run1 heads for 18.67
    per_trial = (3 * asha_expected_epochs(QUICKSTART_ASHA) + 26) / (3 + 5)
    assert t.epochs_expected == pytest.approx(26 + 4 * per_trial + 18 + 2 / 3)
    low = tally(search_of_seven(), total=10, metric="val_accuracy", mode="min", asha=QUICKSTART_ASHA)
    assert low.best == (0.3, "err1")   # an invalid trial's stand-in score (0 at epoch 0) is never the best


def test_a_trial_whose_loss_diverged_is_counted_as_diverged_not_stopped():
    ended = trial("div1", Trial.TERMINATED, [0.3, 0.0], end_reason="diverged at epoch 2: training loss became nan")
    t = tally([ended], total=2, metric="val_accuracy", mode="max", asha=QUICKSTART_ASHA)
    assert t.counts["diverged"] == 1 and t.counts["stopped"] == 0
    assert progress_line(t, "val_accuracy", 5, None, False).startswith("[0:05] 1/2 trials done (1 diverged)")


def test_the_best_is_the_trials_own_over_epochs_a_result_carries_in_a_list():
    batch = trial("a", Trial.RUNNING, [0.5, 0.8], best_score=0.93)     # epochs 3 to 6 in one result: .7 .93 .85 .8
    t = tally([batch], total=1, metric="val_accuracy", mode="max", asha=QUICKSTART_ASHA)
    assert t.best == (0.93, "a")


def test_the_line_says_where_the_search_stands():
    t = tally(search_of_seven(), total=10, metric="val_accuracy", mode="max", asha=QUICKSTART_ASHA)
    line = progress_line(t, "val_accuracy", elapsed=75, rate=0.5, done=False)
    assert line.startswith("[1:15] 5/10 trials done (1 completed, 2 stopped early, 1 invalid, 1 failed), 1 running")
    assert "best val_accuracy 0.97 (run1)" in line
    eta = clock((t.epochs_expected - t.epochs_done) / 0.5)
    assert line.endswith(f"{t.epochs_done}/~{t.epochs_expected:.0f} trial-epochs, ETA {eta}")
    final = progress_line(t, "val_accuracy", elapsed=3725, rate=0.5, done=True)
    assert final.startswith("[1:02:05] 5/10 trials done") and final.endswith("| 33 trial-epochs")
    assert "ETA" not in final and "running" not in final
    first = progress_line(tally([], 24, "val_accuracy", "max", QUICKSTART_ASHA), "val_accuracy", 0, None, False)
    assert first == "[0:00] 0/24 trials done, 0 running | 0/~114 trial-epochs"


def test_the_reporter_writes_a_line_at_most_every_few_seconds_and_one_at_the_end(capsys):
    reporter = SearchProgress("val_accuracy", "max", QUICKSTART_ASHA, total=10)
    reporter.setup(total_samples=10, metric="val_accuracy", mode="max")
    trials = search_of_seven()
    assert reporter.should_report(trials)
    reporter.report(trials, False)
    assert not reporter.should_report(trials) and reporter.should_report(trials, done=True)
    reporter.report(trials, True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "1 running" in lines[0] and lines[1].endswith("33 trial-epochs")


def records_reaching(logger_name: str, emit) -> list[str]:
    """Messages a logger passes on to its handlers while ``emit`` runs."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    return seen


def test_tensorboards_warning_about_the_epochs_list_is_dropped_and_no_other():
    name = "ray.tune.logger.tensorboardx"

    def warn(key: str):
        return lambda: logging.getLogger(name).warning(          # Ray's text, as it words it
            f"You are trying to log an invalid value ({key}=[{{'epoch': 1}}]) via TensorboardX. Skipping it.")

    try:
        quiet_libraries(verbose=False)
        assert records_reaching(name, warn("ray/tune/epochs")) == []
        assert len(records_reaching(name, warn("ray/tune/other"))) == 1
    finally:
        quiet_libraries(verbose=False)


def test_printed_notices_are_dropped_line_by_line_and_the_rest_passes():
    import io

    from tuner.console import DropLines

    out = io.StringIO()
    stream = DropLines(out, ("Created version",))
    stream.write("Created version '1' of model 'q'.\nwarning: something to act on\nCreated ")
    stream.write("version '2'.\ntail without newline")
    stream.flush()
    assert out.getvalue() == "warning: something to act on\ntail without newline"


def test_only_notices_that_call_for_no_action_are_dropped(tmp_path, capfd):
    from mlflow.tracking import MlflowClient
    from ray._private.authentication import authentication_token_setup as token

    def both_token_notices():
        token._warn_token_auth_enabled()      # what a Ray started by the search says: nothing to do
        token._warn_token_auth_disabled()     # a cluster anyone on the network can use: act on it

    try:
        quiet_libraries(verbose=False)
        quiet = records_reaching(token.__name__, both_token_notices)
        MlflowClient(f"sqlite:///{tmp_path / 'quiet.db'}").search_experiments()
        quiet_err = capfd.readouterr().err
        quiet_libraries(verbose=True)
        loud = records_reaching(token.__name__, both_token_notices)
        MlflowClient(f"sqlite:///{tmp_path / 'loud.db'}").search_experiments()
        loud_err = capfd.readouterr().err
    finally:
        quiet_libraries(verbose=False)
    assert len(quiet) == 1 and quiet[0].startswith("Token authentication is disabled")
    assert len(loud) == 2
    assert "Creating initial MLflow database tables" not in quiet_err
    assert "Creating initial MLflow database tables" in loud_err


@pytest.mark.slow
def test_a_search_prints_progress_lines_not_status_tables(tmp_path):
    code, out, err = run_cli(*search_args(tmp_path, "--space", "quickstart", "--name", "lines", "--num-samples", "4",
                                          "--max-epochs", "2"), cwd=tmp_path)
    assert code == 0, err[-3000:]
    progress = [ln for ln in out.splitlines() if re.match(r"\[\d+:\d\d\] \d+/4 trials done", ln)]
    assert progress and re.fullmatch(r"\[\d+:\d\d\] 4/4 trials done \(.*\) \| best val_accuracy .* \| \d+ trial-epochs",
                                     progress[-1]), progress
    assert "== Status ==" not in out and "Leaderboard: quickstart (4 trials" in out
    assert "Token authentication is enabled" not in err and "Creating initial MLflow database tables" not in err
    assert len(out.splitlines()) + len(err.splitlines()) < 45, out + err


@pytest.mark.slow
def test_verbose_shows_rays_status_table_and_leaves_a_ray_it_did_not_start(ray_session, tmp_path, capsys):
    from tuner.run import main

    assert main(search_args(tmp_path, "--space", "quickstart", "--name", "loud", "--num-samples", "2",
                            "--max-epochs", "1", "--verbose")) == 0
    out = capsys.readouterr().out
    assert "== Status ==" in out and "trials done" not in out
    assert ray_session.is_initialized()    # the tests' Ray: not the search's to stop
    lingering = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    assert not lingering                   # nothing that would keep the process from ending
