"""Real searches through Ray Tune with ASHA and Optuna, and the command's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_cli, search_args
from tuner.run import main
from tuner.spaces import find_space, load_space



def runs_of(db, experiment: str):
    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_quickstart_finishes_and_beats_chance_by_a_wide_margin(quickstart):
    code, tmp, board = quickstart
    assert code == 0
    assert len(board) == 24
    assert board["best_val_accuracy"].max() >= 0.95
    _, parents, _ = runs_of(tmp / "mlflow.db", "quickstart")
    assert parents[0].data.metrics["test_accuracy"] >= 0.9      # chance is 0.1


@pytest.mark.slow
def test_asha_stops_some_trials_early(quickstart):
    _, _, board = quickstart
    stopped = board[board["end_reason"].str.startswith("stopped by ASHA")]
    assert len(stopped) >= 3
    assert set(stopped["epochs"]) <= {2, 6, 18}                 # the rungs of grace 2, factor 3, max 20
    assert (board["epochs"] == 20).any()


@pytest.mark.slow
def test_quickstart_writes_a_parent_run_and_a_nested_run_per_trial(quickstart):
    _, tmp, board = quickstart
    client, parents, children = runs_of(tmp / "mlflow.db", "quickstart")
    assert len(parents) == 1 and len(children) == len(board)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.search"] == "qs"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["tuner.trial_id"] for c in children} == set(board["trial_id"])
    for child in children:
        assert {"lr", "depth", "width", "batch_size", "model"} <= set(child.data.params)
        epochs = int(board.loc[board["trial_id"] == child.data.tags["tuner.trial_id"], "epochs"].iloc[0])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, epochs + 1))           # one value per epoch, step = epoch
        assert child.data.tags["tuner.end_reason"]


def search_board(tmp_path, name: str, space_text: str, *args: str) -> pd.DataFrame:
    """Run a search of a small digits space written here to the end (``args``: more of the command line);
    its leaderboard."""
    space = tmp_path / f"{name}.yaml"
    space.write_text("dataset: digits\nmodel: convnet\n" + space_text)
    assert main(search_args(tmp_path, "--space", str(space), "--name", name, *args)) == 0
    return pd.read_csv(tmp_path / "ray_results" / name / "leaderboard.csv")


@pytest.mark.slow
def test_a_network_that_learns_nothing_is_stopped_at_chance_and_its_run_says_so(ray_session, tmp_path):
    board = search_board(tmp_path, "still", "description: a learning rate too small to learn\n"
                         "search:\n  lr: {loguniform: [1.0e-9, 1.0e-2]}\nstart:\n  - {lr: 1.0e-9}\n  - {lr: 0.01}\n"
                         "scheduler: {max_epochs: 3, grace_period: 1}\nnum_samples: 2\n").set_index("lr")
    assert board.loc[1e-9, "epochs"] == 1
    assert board.loc[1e-9, "end_reason"].startswith("stopped by ASHA at chance level at epoch 1 (val_accuracy 0.")
    assert board.loc[0.01, "end_reason"] == "completed"
    _, _, children = runs_of(tmp_path / "mlflow.db", "still")
    reasons = {float(c.data.params["lr"]): c.data.tags["tuner.end_reason"] for c in children}
    assert reasons[1e-9] == board.loc[1e-9, "end_reason"] and reasons[0.01] == "completed"


@pytest.mark.slow
def test_an_impossible_architecture_does_not_stop_the_search(ray_session, tmp_path):
    board = search_board(tmp_path, "deep", "description: depth 4 cannot fit 8x8\n"
                         "search:\n  depth: {choice: [2, 4]}\nstart:\n  - {depth: 4}\n  - {depth: 2}\n"
                         "scheduler: {max_epochs: 1}\nnum_samples: 3\n")
    invalid = board[board["end_reason"].str.startswith("invalid architecture")]
    assert len(invalid) >= 1 and (invalid["depth"] == 4).all()
    assert (board["end_reason"] == "completed").any()


@pytest.mark.slow
def test_smoke_search_of_mnist_filters_strides(ray_session, tmp_path, data_dir):
    assert main(search_args(tmp_path, "--space", "mnist_filters_strides", "--smoke", "--name", "smoke",
                            "--data-dir", str(data_dir))) == 0
    board = pd.read_csv(tmp_path / "ray_results" / "smoke" / "leaderboard.csv")
    assert len(board) == 2 and set(board["epochs"]) <= {0, 1}


def one_line_error(code, out, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_unknown_space_exits_2_with_one_line(tmp_path):
    assert "unknown space 'nope'" in one_line_error(*run_cli("--space", "nope", cwd=tmp_path))


@pytest.mark.parametrize("space, told", [("cifar_dept", "unknown space 'cifar_dept'"),
                                         ("bad.yaml", "bad.yaml: not valid YAML at line 3")])
def test_a_mistyped_space_or_malformed_file_is_told_before_ray_and_torch_are_loaded(tmp_path, space, told):
    # The search's libraries take seconds to import; a wrong name or broken YAML should not wait for them.
    (tmp_path / "bad.yaml").write_text("description: x\nsearch: {lr: [1, 2\n")
    space = str(tmp_path / space) if space.endswith(".yaml") else space
    check = ("import sys\nfrom tuner import run\ncode = run.main(['--space', %r])\n"
             "print(code, sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))" % space)
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "[]"], proc.stderr
    assert told in proc.stderr


def test_malformed_space_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nsearch: {lr: [1, 2\n")
    assert "not valid YAML" in one_line_error(*run_cli("--space", str(bad), cwd=tmp_path))


def test_missing_data_dir_exits_2_with_one_line(tmp_path):
    line = one_line_error(*run_cli("--space", "mnist_filters_strides", "--data-dir", str(tmp_path / "none"),
                                   cwd=tmp_path))
    assert "dataset mnist not found" in line and "--download" in line


def test_tpe_hears_of_asha_stops_as_pruned_trials_and_of_complete_ones_by_their_best_epoch():
    from ray import tune

    from tuner.search import FidelityAwareOptuna

    searcher = FidelityAwareOptuna(metric="val_accuracy", mode="max", max_epochs=6)
    searcher.set_search_properties("val_accuracy", "max", {"lr": tune.loguniform(1e-4, 1e-1)})
    for trial_id, scores, end in (("stopped", [0.3, 0.4], None), ("done", [0.5, 0.9, 0.8, 0.7, 0.7, 0.6],
                                                                       "completed"),
                                  ("patience", [0.6, 0.5], "early-stopped by patience 1 at epoch 2")):
        assert searcher.suggest(trial_id) is not None
        for epoch, score in enumerate(scores, 1):
            result = {"val_accuracy": score, "epoch": epoch, "training_iteration": epoch}
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, {**result, **({"end_reason": end} if end else {})})
    trials = {tid: searcher._ot_study.trials[t.number] for tid, t in searcher._ot_trials.items()}
    assert trials["stopped"].state.name == "PRUNED" and trials["stopped"].intermediate_values == {1: 0.3, 2: 0.4}
    assert trials["done"].state.name == "COMPLETE" and trials["done"].value == 0.9
    assert trials["patience"].state.name == "COMPLETE" and trials["patience"].value == 0.6


def test_tpe_told_asha_stops_as_values_completes_them_with_their_best_epoch():
    from ray import tune

    from tuner.search import FidelityAwareOptuna

    searcher = FidelityAwareOptuna(metric="val_accuracy", mode="max", max_epochs=6, stopped="value")
    searcher.set_search_properties("val_accuracy", "max", {"lr": tune.loguniform(1e-4, 1e-1)})
    searcher.suggest("stopped")
    for epoch, score in enumerate([0.3, 0.5, 0.4], 1):
        searcher.on_trial_result("stopped", {"val_accuracy": score, "epoch": epoch})
    searcher.on_trial_complete("stopped", {"val_accuracy": 0.4, "epoch": 3})
    trial = searcher._ot_study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.value == 0.5 and trial.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.4}


def test_a_spaces_searcher_section_sets_the_sampler_and_the_scheduler(tmp_path):
    from tuner.search import SearchOptions, effective_space, make_scheduler, make_searcher, search_settings

    text = (Path(find_space("quickstart")).read_text() + "searcher: {multivariate: true, constant_liar: true, "
            "startup_trials: 4, stopped: value}\n").replace("scheduler: {", "scheduler: {brackets: 2, ")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    space = load_space(str(path))
    opts = SearchOptions("x", str(tmp_path), space.num_samples, space.max_epochs, 1, 0)
    eff = effective_space(space, opts)
    searcher = make_searcher(eff, opts)
    sampler = searcher._sampler
    assert (sampler._multivariate, sampler._constant_liar, sampler._n_startup_trials) == (True, True, 4)
    assert searcher._stopped == "value" and len(make_scheduler(eff)._brackets) == 2
    settings = search_settings(eff, opts)
    assert (settings["startup_trials"], settings["brackets"], settings["multivariate"]) == (4, 2, True)
    default = load_space("quickstart").searcher       # a space without the section: the measured defaults
    assert (default.multivariate, default.constant_liar, default.stopped) == (False, False, "pruned")
    sampler = make_searcher(effective_space(load_space("quickstart"), opts), opts)._sampler
    assert (sampler._multivariate, sampler._constant_liar) == (False, False)   # set, not Optuna's own default
    assert default.startup(40) == 10 and default.startup(8) == 3


@pytest.mark.parametrize("stopped, state", [("pruned", "PRUNED"), ("value", "COMPLETE")])
def test_a_network_that_could_not_be_built_ranks_below_every_trial_that_trained(stopped, state):
    from optuna.samplers._tpe.sampler import _split_trials
    from ray import tune

    from tuner.search import FidelityAwareOptuna

    searcher = FidelityAwareOptuna(metric="val_accuracy", mode="max", max_epochs=6, stopped=stopped)
    searcher.set_search_properties("val_accuracy", "max", {"lr": tune.loguniform(1e-4, 1e-1)})
    searcher.suggest("trained")
    searcher.on_trial_result("trained", {"val_accuracy": 0.7, "epoch": 1})
    searcher.on_trial_complete("trained", {"val_accuracy": 0.7, "epoch": 1})       # stopped by ASHA
    searcher.suggest("unbuildable")
    searcher.on_trial_complete("unbuildable", {"val_accuracy": 0.0, "epoch": 0, "end_reason": "invalid architecture: x"})
    study = searcher._ot_study
    assert study.trials[1].state.name == state
    below, above = _split_trials(study, study.trials, 1)      # TPE's good and bad groups
    assert [t.number for t in below] == [0] and [t.number for t in above] == [1]


def test_a_trial_is_listed_by_its_own_folder_and_never_with_another_trials_result(tmp_path):
    """After a node was lost, Ray gave a trial whose reused actor died with the node the last result of that
    actor's previous trial (seen on the two-node cluster test): the trial is listed once, as its own."""
    from types import SimpleNamespace

    from tuner.summary import leaderboard

    space = load_space("quickstart")
    config = {k: 1 for k in space.search}
    epochs = [{"epoch": e, "val_accuracy": acc} for e, acc in ((1, 0.5), (2, 0.7))]
    done = {"trial_id": "aaaa1111", "epoch": 2, "val_accuracy": 0.7, "end_reason": "completed", "epochs": epochs}
    results = [SimpleNamespace(path=str(tmp_path / "trial_aaaa1111"), metrics=done, config=config, error=None,
                               metrics_dataframe=pd.DataFrame([{"epochs": epochs}])),
               SimpleNamespace(path=str(tmp_path / "trial_bbbb2222"), metrics=done, config=config,
                               error=RuntimeError("The actor 7255 is unavailable"), metrics_dataframe=None)]
    board = leaderboard(results, space).set_index("trial_id")
    assert sorted(board.index) == ["aaaa1111", "bbbb2222"]
    assert board.loc["aaaa1111", "best_val_accuracy"] == 0.7 and board.loc["aaaa1111", "epochs"] == 2
    lost = board.loc["bbbb2222"]
    assert lost["epochs"] == 0 and pd.isna(lost["best_val_accuracy"])
    assert lost["end_reason"] == "failed: The actor 7255 is unavailable"


def test_a_space_can_choose_optunas_gaussian_process_sampler(tmp_path):
    import optuna

    from tuner.search import SearchOptions, effective_space, make_searcher, search_settings

    path = tmp_path / "mine.yaml"
    path.write_text(Path(find_space("quickstart")).read_text() + "searcher: {sampler: gp, stopped: value}\n")
    space = load_space(str(path))
    opts = SearchOptions("x", str(tmp_path), space.num_samples, space.max_epochs, 1, 0)
    searcher = make_searcher(effective_space(space, opts), opts)
    assert isinstance(searcher._sampler, optuna.samplers.GPSampler) and searcher._stopped == "value"
    assert search_settings(effective_space(space, opts), opts)["searcher"].startswith("OptunaSearch (GPSampler)")
