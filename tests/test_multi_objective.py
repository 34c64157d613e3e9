"""Multi-objective searches: what the searcher tells Optuna, and a real search of accuracy against size on
digits: its leaderboard's Pareto front is non-dominated, the front's models are registered as pareto-1, ...
with the best first objective the champion, the search's run records the front, and ``tuner.analyze --model
pareto-K`` studies the K-th model."""

from __future__ import annotations

import contextlib
import glob
import io
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from tests.conftest import search_args
from tuner.analysis.settings import Options
from tuner.analysis.source import load_source
from tuner.data import load_part
from tuner.search import FidelityAwareOptuna
from tuner.spaces import SPACES_DIR

OBJECTIVES = [("val_accuracy", "max"), ("params", "min")]


def report(epochs: list[tuple[int, float]], **extra) -> dict:
    """A trial's result: every epoch since its previous report, the latest one's values on top."""
    last_epoch, last_score = epochs[-1]
    return {"val_accuracy": last_score, "epoch": last_epoch, "training_iteration": last_epoch,
            "epochs": [{"epoch": e, "val_accuracy": v} for e, v in epochs], **extra}


def searcher_after(objectives, trials) -> FidelityAwareOptuna:
    """A searcher told of ``trials``: id -> (reports, end reason, params). As in Tune, the last report (the one
    the scheduler stops the trial on) reaches only on_trial_complete."""
    searcher = FidelityAwareOptuna(max_epochs=6, objectives=objectives)
    searcher.set_search_properties("val_accuracy", "max", {"lr": tune.loguniform(1e-4, 1e-1)})
    for trial_id, (reports, end, params) in trials.items():
        assert searcher.suggest(trial_id) is not None
        results = [report(r, params=params) for r in reports] or [{"val_accuracy": 0.0, "epoch": 0, "params": params}]
        for result in results[:-1]:
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, {**results[-1], **({"end_reason": end} if end else {})})
    return searcher


def told(searcher) -> dict:
    return {tid: searcher._ot_study.trials[t.number] for tid, t in searcher._ot_trials.items()}


TRIALS = {"stopped": ([[(1, 0.3), (2, 0.4)]], None, 800.0),
          "done": ([[(1, 0.5), (2, 0.6)], [(3, 0.9), (4, 0.8), (5, 0.7), (6, 0.7)]], "completed", 5000.0),
          "invalid": ([], "invalid architecture: the map shrinks below 1x1", float("nan"))}


def test_a_multi_objective_study_hears_each_trained_trial_as_the_point_it_reached():
    searcher = searcher_after(OBJECTIVES, TRIALS)
    assert searcher.metric == ["val_accuracy", "params"] and searcher.mode == ["max", "min"]
    assert [d.name for d in searcher._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = told(searcher)
    assert trials["stopped"].state.name == "COMPLETE" and trials["stopped"].values == [0.4, 800.0]
    # its best epoch (3) came in the result ASHA stopped it on at max_t
    assert trials["done"].state.name == "COMPLETE" and trials["done"].values == [0.9, 5000.0]
    assert trials["invalid"].state.name == "PRUNED" and trials["invalid"].values is None
    assert searcher.suggest("next")["lr"] > 0          # multi-objective TPE samples from these


def test_a_single_objective_trial_counts_the_epochs_of_the_result_it_was_stopped_on():
    searcher = searcher_after(None, TRIALS)
    trials = told(searcher)
    assert trials["done"].state.name == "COMPLETE" and trials["done"].value == 0.9
    assert trials["done"].intermediate_values == {1: 0.5, 2: 0.6, 3: 0.9, 4: 0.8, 5: 0.7, 6: 0.7}
    assert trials["stopped"].state.name == "PRUNED" and trials["stopped"].intermediate_values == {1: 0.3, 2: 0.4}


# ---- a real search ----------------------------------------------------------------------------------------

def dominated(point, others, modes) -> bool:
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    p, o = np.asarray(point) * signs, np.asarray(others) * signs
    return bool(((o >= p).all(axis=1) & (o > p).any(axis=1)).any())


@pytest.fixture(scope="module")
def front_search(ray_session, tmp_path_factory):
    from tuner.run import main

    tmp = tmp_path_factory.mktemp("front")
    text = (SPACES_DIR / "quickstart.yaml").read_text().replace("metric: val_accuracy\nmode: max\n", "")
    (tmp / "front.yaml").write_text(text + "objectives: [{metric: val_accuracy, mode: max}, {metric: params}]\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(search_args(tmp, "--space", str(tmp / "front.yaml"), "--name", "front", "--num-samples", "10",
                                "--max-epochs", "6"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    parent = client.search_runs([client.get_experiment_by_name("front").experiment_id],
                                filter_string="tags.`tuner.search` = 'front'")[0]
    return SimpleNamespace(code=code, tmp=tmp, uri=uri, client=client, parent=parent, printed=printed.getvalue(),
                           board=pd.read_csv(tmp / "ray_results" / "front" / "leaderboard.csv"))


@pytest.mark.slow
def test_the_leaderboards_front_is_non_dominated_and_the_rest_is_not(front_search):
    assert front_search.code == 0
    board = front_search.board
    trained = board[board["epochs"] > 0]
    points = trained[["best_val_accuracy", "params"]].to_numpy()
    on_front = trained["pareto"].notna()
    assert on_front.any() and board.loc[0, "pareto"] == "pareto-1"      # the best first objective leads
    for i, point in enumerate(points):   # on the front exactly when no trial beats it on both (ties stay)
        assert dominated(point, points, ["max", "min"]) == (not on_front.iloc[i])
    front = trained[on_front].sort_values("pareto", key=lambda c: c.str.removeprefix("pareto-").astype(int))
    assert list(front["best_val_accuracy"]) == sorted(front["best_val_accuracy"], reverse=True)
    assert board.loc[board["epochs"] == 0, "params"].isna().all()     # invalid architectures: no network


@pytest.mark.slow
def test_the_front_is_registered_and_recorded_on_the_search_run(front_search):
    board, client = front_search.board, front_search.client
    front = list(board[board["pareto"].notna()].sort_values("rank")["trial_id"])
    assert front_search.parent.data.tags["tuner.front"] == ",".join(front)
    assert front_search.parent.data.metrics["front_size"] == len(front)
    aliases = client.get_registered_model("front").aliases
    assert {a for a in aliases if a.startswith("pareto-")} == {f"pareto-{i}" for i in range(1, len(front) + 1)}
    for i, trial_id in enumerate(front, 1):
        assert client.get_model_version("front", aliases[f"pareto-{i}"]).tags["trial_id"] == trial_id
    assert aliases["champion"] == aliases["pareto-1"]


@pytest.mark.slow
def test_the_summary_shows_the_front_with_each_models_test_accuracy(front_search):
    board, client = front_search.board, front_search.client
    printed = front_search.printed
    front = board[board["pareto"].notna()]
    assert f"=== Pareto front: val_accuracy (max) against params (min); {len(front)} of 10 trials ===" in printed
    shown = printed.split("=== Pareto front")[1].split("Best trial")[0]
    for _, row in front.iterrows():
        run = client.search_runs([front_search.parent.info.experiment_id],
                                 filter_string=f"tags.`tuner.trial_id` = '{row['trial_id']}'")[0]
        line = next(ln for ln in shown.splitlines() if row["trial_id"] in ln)
        assert line.split()[0] == row["pareto"] and f"{run.data.metrics['test_accuracy']:.4g}" in line
        assert run.data.tags["tuner.pareto"] == row["pareto"].removeprefix("pareto-")
    assert "Best config:" not in printed and "Pareto front: models:/front@pareto-1" in printed


@pytest.mark.slow
def test_the_searcher_was_told_every_trial_as_its_record_has_it(front_search):
    state = pickle.load(open(glob.glob(str(front_search.tmp / "ray_results" / "front" / "searcher-state-*.pkl"))[0],
                             "rb"))
    study, board = state["_ot_study"], front_search.board.set_index("trial_id")
    for trial_id, trial in state["_ot_trials"].items():
        frozen = study.trials[trial.number]
        if board.at[trial_id, "epochs"] == 0:
            assert frozen.state.name == "PRUNED"
        else:
            assert frozen.state.name == "COMPLETE"
            assert frozen.values == [board.at[trial_id, "best_val_accuracy"], board.at[trial_id, "params"]]


@pytest.mark.slow
def test_analyze_studies_a_model_of_the_front_by_its_place(front_search, tmp_path):
    board = front_search.board
    last = int(board["pareto"].dropna().str.removeprefix("pareto-").astype(int).max())
    opts = Options("front", front_search.uri, tmp_path, tmp_path / "out", model=f"pareto-{last}")
    source = load_source(opts)
    trial_id = board.loc[board["pareto"] == f"pareto-{last}", "trial_id"].iloc[0]
    assert source.trial_id == trial_id
    test = load_part("digits", None, "test")
    with torch.no_grad():
        predicted = source.model(torch.from_numpy(test.images.astype(np.float32) / 255.0)).argmax(1).numpy()
    assert (predicted == test.labels).mean() == pytest.approx(source.best.data.metrics["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_an_objective_that_is_not_a_metric_is_one_line_and_exit_2_before_anything_starts(tmp_path):
    from tests.conftest import run_cli

    text = (SPACES_DIR / "quickstart.yaml").read_text().replace("metric: val_accuracy\nmode: max\n", "")
    (tmp_path / "bad.yaml").write_text(text + "objectives: [{metric: val_accuracy}, {metric: flops}]\n")
    code, out, err = run_cli(*search_args(tmp_path, "--space", str(tmp_path / "bad.yaml")), cwd=tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert "objectives[1].metric: 'flops' is not allowed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]      # nothing started or written
