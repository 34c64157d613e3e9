"""The search's part of the report (python -m tuner.analyze --search NAME --search-only), checked against the
trials' own records in MLflow: importances sum as documented, the rung counts are ASHA's decisions as the
trials' end reasons record them, FIFO's cost follows from the trials' epochs, the size/accuracy front is
non-dominated and its sizes are the networks' own; the files are on the search's run; one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from models import build_model
from tests.conftest import CHROMIUM, screenshot
from tuner.analysis.importance import METHODS, MIN_TRIALS
from tuner.analyze import main

SEARCH_FILES = {"trials.csv", "importance.csv", "importance.png", "parallel_coordinates.png", "marginals.png",
                "budget_rungs.csv", "budget_fifo.csv", "trial_times.csv", "timeline.png", "tradeoffs.csv",
                "tradeoffs.png"}
SEARCH_SECTIONS = ["search", "importance", "parallel", "marginals", "budget", "tradeoffs"]
ASHA_STOP = re.compile(r"stopped by ASHA at epoch (\d+) \(rung (\d+)\)")
slow = pytest.mark.slow   # needs the session's quickstart search


@pytest.fixture(scope="module")
def section(quickstart, tmp_path_factory):
    """The search's part of the report of the session's quickstart search, and the trials' own records."""
    code, tmp, board = quickstart
    assert code == 0
    out = tmp_path_factory.mktemp("search_report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rc = main(["--search", "qs", "--tracking-uri", uri, "--out", str(out), "--search-only"])
    client = MlflowClient(uri, registry_uri=uri)
    summary = json.loads((out / "summary.json").read_text()) if rc == 0 else {}
    parent = client.get_run(summary["search_run_id"]) if summary else None
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'") if parent else []
    epochs = {r.data.tags["tuner.trial_id"]: [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
              for r in runs}
    return SimpleNamespace(rc=rc, out=out, uri=uri, client=client, summary=summary, parent=parent, runs=runs,
                           epochs=epochs, board=board)


def csv(section, name: str) -> pd.DataFrame:
    return pd.read_csv(section.out / name)


@slow
def test_the_search_part_writes_its_files_and_nothing_of_the_model(section):
    assert section.rc == 0
    assert {p.name for p in section.out.iterdir()} == SEARCH_FILES | {"report.html", "summary.json"}
    assert "best_run_id" not in section.summary and set(section.summary["search_files"]) == SEARCH_FILES
    for path in section.out.glob("*.png"):
        with Image.open(path) as image:
            low, high = image.convert("L").getextrema()
            assert image.width > 100 and high > low, path.name


@slow
def test_a_row_per_trial_with_the_outcome_its_run_records(section):
    trials = csv(section, "trials.csv").set_index("trial_id")
    tags = {r.data.tags["tuner.trial_id"]: r.data.tags["tuner.end_reason"] for r in section.runs}
    assert set(trials.index) == set(tags) == set(section.board["trial_id"])
    assert all(trials.at[t, "end_reason"] == reason for t, reason in tags.items())
    assert all(trials.at[t, "epochs"] == len(e) for t, e in section.epochs.items())
    # Best scores as the leaderboard ranked them (from Ray's results), read back from MLflow.
    board = section.board.set_index("trial_id")
    trained = board["epochs"] > 0
    assert np.allclose(trials.loc[board.index[trained], "best"], board.loc[trained, "best_val_accuracy"])


@slow
def test_importances_of_each_method_and_set_sum_to_one(section):
    table = csv(section, "importance.csv").set_index("setting")
    searched = {k.split(".")[1] for k in section.parent.data.params if k.startswith("search.")}
    assert set(table.index) == searched
    assert list(table.columns) == [f"{m}, {label}" for label in ("at the first rung (epoch 2)",
                                                                  "not stopped (best epoch)") for m in METHODS]
    counts = section.summary["importance_trials"]
    ran = [r for r in section.runs if r.data.tags["tuner.end_reason"].startswith(("completed", "early-stopped"))]
    for column in table:
        if table[column].isna().all():    # left empty only where README says so
            label = column.split(", ", 1)[1]
            same = len({round(r.data.metrics.get("best_val_accuracy", r.data.metrics["val_accuracy"]), 12)
                        for r in ran}) <= 1
            assert counts[label] < MIN_TRIALS or (column.startswith("fANOVA") and same), column
            continue
        assert table[column].between(0, 1).all() and table[column].sum() == pytest.approx(1.0, abs=1e-9), column
    # The first-rung study holds every trial that trained two epochs; the other, the trials ASHA let run.
    assert counts["at the first rung (epoch 2)"] == sum(len(e) >= 2 for e in section.epochs.values())
    assert counts["not stopped (best epoch)"] == len(ran)
    assert section.summary["importance_order"][0] == table.iloc[:, 0].idxmax()


@slow
def test_rung_counts_are_ashas_decisions_as_the_trials_record_them(section):
    rungs = csv(section, "budget_rungs.csv")
    assert list(rungs["ends at"]) == ["rung 0", "rung 1", "rung 2", "max_t"]     # grace 2, factor 3, max_t 20
    recorded = [ASHA_STOP.match(r.data.tags["tuner.end_reason"]) for r in section.runs]
    per_rung = pd.Series([int(m.group(2)) for m in recorded if m]).value_counts()
    assert list(rungs["stopped by ASHA"][:-1]) == [int(per_rung.get(k, 0)) for k in range(3)]
    assert all(int(m.group(1)) == (2, 6, 18)[int(m.group(2))] for m in recorded if m)
    completed = sum(r.data.tags["tuner.end_reason"] == "completed" for r in section.runs)
    assert rungs["completed"].iloc[-1] == completed
    assert rungs["trial-epochs"].sum() == sum(len(e) for e in section.epochs.values())
    trained_to = lambda epoch: sum(len(e) >= epoch for e in section.epochs.values())   # noqa: E731
    assert list(rungs["trials training"]) == [trained_to(1), trained_to(3), trained_to(7), trained_to(19)]


@slow
def test_fifo_trains_every_asha_stopped_trial_on_to_max_t(section):
    fifo = csv(section, "budget_fifo.csv").set_index("schedule")
    stopped = {r.data.tags["tuner.trial_id"] for r in section.runs
               if r.data.tags["tuner.end_reason"].startswith("stopped by ASHA")}
    asha = sum(len(e) for e in section.epochs.values())
    same = sum(20 if t in stopped else len(e) for t, e in section.epochs.items())
    assert list(fifo["trial-epochs"]) == [asha, same, 20 * sum(len(e) > 0 for e in section.epochs.values())]
    assert fifo["times as run"].iloc[1] == pytest.approx(same / asha)
    times = csv(section, "trial_times.csv")
    assert len(times) == len(section.runs) and (times["wall_seconds"] > 0).all()
    assert (times["train_seconds"] < times["wall_seconds"]).all()
    busy = times["train_seconds"] + times["eval_seconds"] + times["overhead_seconds"]
    worked = busy > 0                                      # a rejected network measured nothing: its wall time
    assert np.allclose(times.loc[worked, "device_seconds"], busy[worked])          # one CPU per trial
    assert (busy <= times["wall_seconds"]).all()


def test_device_seconds_leave_out_the_time_a_search_stood_interrupted(tmp_path):
    from mlflow.tracking import MlflowClient

    from tuner.analysis.trials import Settings, trial_row

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run_id = client.create_run(client.create_experiment("e"), start_time=1_000).info.run_id
    for key, value in (("val_accuracy", 0.5), ("epoch_seconds", 3.0), ("eval_seconds", 1.0), ("setup_seconds", 0.5)):
        client.log_metric(run_id, key, value, step=1)
    client.set_terminated(run_id, end_time=1_000 + 3_600_000)      # resumed an hour later, then finished
    settings = Settings("val_accuracy", "max", 1, 2, 2, [], cpus_per_trial=2, gpus_per_trial=0, searcher="tpe")
    row, _ = trial_row(client, client.get_run(run_id), settings, {}, 0)
    assert row["wall_seconds"] == 3600 and row["device_seconds"] == pytest.approx(2 * 4.5)


@slow
def test_the_size_front_is_non_dominated_and_sizes_are_the_networks_own(section):
    table = csv(section, "tradeoffs.csv")
    on_front = table[table["front_params"].notna()]
    points = table[["best", "params"]].to_numpy()
    for best, params in on_front[["best", "params"]].to_numpy():
        beaten = (points[:, 0] >= best) & (points[:, 1] <= params) & ((points[:, 0] > best) | (points[:, 1] < params))
        assert not beaten.any()
    for best, params in table.loc[table["front_params"].isna(), ["best", "params"]].to_numpy():
        front = on_front[["best", "params"]].to_numpy()
        assert ((front[:, 0] >= best) & (front[:, 1] <= params)).any()   # every other trial is beaten or tied
    assert list(on_front.sort_values("front_params")["best"]) == sorted(on_front["best"], reverse=True)
    runs = {r.data.tags["tuner.trial_id"]: r for r in section.runs}
    for _, row in table.iterrows():
        settings = runs[row["trial_id"]].data.params
        config = {k: int(settings[k]) if k in ("depth", "width", "kernel_size") else settings[k]
                  for k in ("depth", "width", "growth", "kernel_size", "fc", "padding")}
        config["batch_norm"] = settings["batch_norm"] == "True"
        assert row["params"] == sum(p.numel() for p in build_model("convnet", config, (1, 8, 8), 10).parameters())
    assert (table["latency_ms"] > 0).all() and (table["latency_batch_ms"] > 0).all()


@slow
def test_the_search_part_is_on_the_search_run(section):
    logged = {Path(a.path).name for a in section.client.list_artifacts(section.parent.info.run_id, "analysis")}
    assert logged == SEARCH_FILES | {"report.html", "summary.json"}
    assert section.client.get_run(section.parent.info.run_id).data.tags["tuner.analysis"] == "analysis/report.html"


@slow
def test_the_html_holds_the_search_sections_with_figures_inline(section):
    html = (section.out / "report.html").read_text()
    assert re.findall(r'<section id="([a-z]+)">', html) == SEARCH_SECTIONS
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(list(section.out.glob("*.png"))) and all(s.startswith("data:image/png") for s in sources)
    assert "Each column sums to 1 over the settings" in html and "FIFO" in html


@slow
@pytest.mark.skipif(not CHROMIUM, reason="no chromium")
def test_the_search_part_renders_in_headless_chromium(section, tmp_path):
    with Image.open(screenshot(section.out / "report.html", tmp_path / "search.png", 3000)) as image:
        assert image.size == (1280, 3000)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 100   # figures and tables, not a blank page


# ---- importance on its own ----------------------------------------------------------------------------------

def test_an_infinite_score_is_read_back_as_missing(tmp_path):
    """A diverged trial reports the worst loss, +inf, which MLflow stores as the largest double."""
    from mlflow.tracking import MlflowClient

    from tuner.analysis.trials import history

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("e")).info.run_id
    for step, value in ((1, 2.3), (2, float("inf"))):
        client.log_metric(run, "val_loss", value, step=step)
    read = history(client, run, "val_loss")
    assert read[1] == 2.3 and np.isnan(read[2])


def test_importance_is_left_empty_where_trials_are_too_few_or_all_scored_the_same():
    import optuna

    from tuner.analysis.importance import MIN_TRIALS, evaluate

    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "width": optuna.distributions.CategoricalDistribution([8, 16])}

    def study(scores):
        s = optuna.create_study(direction="maximize")
        s.add_trials([optuna.trial.create_trial(params={"lr": 10 ** -(1 + i % 3), "width": (8, 16)[i % 2]},
                                                distributions=space, value=v) for i, v in enumerate(scores)])
        return s

    rising = [0.1 * i for i in range(8)]
    for method in METHODS:
        found = evaluate(study(rising), method, 0)
        assert set(found) == set(space) and sum(found.values()) == pytest.approx(1.0)
        assert evaluate(study(rising[:MIN_TRIALS - 1]), method, 0) is None
    assert evaluate(study([0.5] * 8), "fANOVA", 0) is None       # no variance to apportion


# ---- one-line errors ----------------------------------------------------------------------------------------

def finished_search(uri: str, objectives: str | None = None) -> None:
    """A finished search's runs as MLflow holds them, one trial, no logged model."""
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("s")
    parent = client.create_run(exp, tags={"tuner.search": "s1", "tuner.best_trial_id": "t1"})
    if objectives:
        client.log_param(parent.info.run_id, "objectives", objectives)
        client.set_tag(parent.info.run_id, "tuner.front", "t1")
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "tuner.trial_id": "t1"})
    client.log_param(child.info.run_id, "dataset", "digits")


@pytest.mark.parametrize("objectives, args, expected", [
    (None, ["--search", "nope", "--search-only"], "no search named 'nope'"),
    (None, ["--search", "s1", "--model", "pareto-1"], "search 's1' is single-objective: it has no Pareto front"),
    ("val_accuracy:max,params:min", ["--search", "s1", "--model", "pareto-2"],
     "search 's1' has no model pareto-2: its Pareto front's models are pareto-1 ... pareto-1"),
    (None, ["--search", "s1", "--model", "front"], "--model 'front': use best, or pareto-K"),
    (None, ["--search", "s1", "--model", "pareto-1", "--search-only"], "--search-only studies no model"),
])
def test_what_cannot_be_reported_is_one_line_and_exit_2(tmp_path, capsys, objectives, args, expected):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished_search(uri, objectives)
    capsys.readouterr()           # MLflow's lines about creating the new store
    assert main([*args, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()      # nothing written
