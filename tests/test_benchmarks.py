"""Tiny runs of every benchmark, so they keep working (their figures are in BENCHMARKS.md, not asserted)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from benchmarks import cifar_fast, gpu, overhead, search_efficiency, search_report, trial_speed

pytestmark = pytest.mark.slow


def test_trial_speed_measures_both_loops(data_dir, capsys):
    result = trial_speed.main(["--dataset", "mnist", "--data-dir", str(data_dir), "--images", "512",
                               "--epochs", "1", "--eval-batches", "256", "64"])
    assert set(result["rates"]) == {"DataLoader, per-item transforms", "tuner, device-resident tensors"}
    assert all(rate > 0 for rate in result["rates"].values())
    assert set(result["eval"]) == {256, 64} and all(rate > 0 for rate in result["eval"].values())
    out = capsys.readouterr().out
    assert "| tuner, device-resident tensors |" in out and "| 64 |" in out and "| 256 | " in out


def test_search_efficiency_compares_the_methods(ray_session, data_dir, tmp_path, capsys):
    results = search_efficiency.main(["--spaces", "quickstart",
                                      "--methods", "tpe-stopped-as-value", "asha-random", "random-again",
                                      "--budget", "6", "--seeds", "0", "--max-epochs", "2", "--train-images", "256",
                                      "--data-dir", str(data_dir), "--trace-dir", str(tmp_path)])
    rows = results["quickstart"]
    # random always runs: it sets the target
    assert [r.method for r in rows] == ["random", "tpe-stopped-as-value", "asha-random", "random-again"]
    assert all(0 <= f <= 1 for r in rows for f in r.finals) and all(w > 0 for r in rows for w in r.walls)
    assert rows[0].reach[0] is not None and rows[0].reach[0] <= 6     # random reaches its own best in budget
    random = json.loads((tmp_path / "quickstart-random-0.json").read_text())
    assert len(random) == 6 and rows[0].full[0] == 3    # the whole budget: three trials (FIFO) of both epochs
    asha_random = json.loads((tmp_path / "quickstart-asha-random-0.json").read_text())
    assert asha_random[0]["config"] != random[0]["config"]     # its own draws, not random search's
    again = json.loads((tmp_path / "quickstart-random-again-0.json").read_text())
    assert again[0]["config"] != random[0]["config"] and len(again) == 6 and rows[3].full[0] == 3
    out = capsys.readouterr().out
    assert "trial-epochs to random's final best" in out and "trials trained to max_epochs" in out
    # Against the same baseline, read from its trace instead of run again:
    again = search_efficiency.main(["--spaces", "quickstart", "--methods", "asha-random", "--budget", "6",
                                    "--seeds", "0", "--max-epochs", "2", "--train-images", "256",
                                    "--data-dir", str(data_dir), "--targets-from", str(tmp_path)])["quickstart"]
    assert [r.method for r in again] == ["random", "asha-random"] and again[0].targets == rows[0].targets
    assert again[0].finals == rows[0].finals and math.isnan(again[0].walls[0])


def test_the_median_trial_epochs_is_never_when_most_seeds_never_reach():
    row = search_efficiency.Row("m", [0.9] * 3, [None, 5, None], [1.0] * 3, [0] * 3, 6, [0.9] * 3)
    assert row.median_reach is None
    assert dataclasses.replace(row, reach=[None, 5, 2]).median_reach == 5     # never counts as the longest


def test_the_epoch_budget_counts_each_epoch_once():
    budget = search_efficiency.EpochBudget(4)
    first = {"epoch": 2, "epochs": [{"epoch": 1}, {"epoch": 2}]}
    last = {"epoch": 3, "epochs": [{"epoch": 3}]}
    for trial_id, result in [("a", first), ("a", last), ("a", {**last, "done": True})]:  # Ray repeats the last
        assert budget(trial_id, result) is False
    assert budget.spent == 3 and not budget.stop_all()
    budget("b", {"epoch": 0, "end_reason": "invalid architecture"})       # rejected: no epoch trained
    budget("b", {"epoch": 1})                                             # a result without an epochs list
    assert budget.spent == 4 and budget.stop_all()


def test_search_efficiency_counts_the_seeds_that_meet_the_target():
    curves = {"random": {0: [0.5] * 5 + [0.9], 1: [0.8] * 6},               # best so far after each trial-epoch
              "tpe": {0: [0.95] * 6, 1: [0.7] * 3 + [0.85] * 3}}
    walls, full = {m: {0: 1.0, 1: 1.0} for m in curves}, {m: {0: 1, 1: 1} for m in curves}
    random, tpe = search_efficiency.summarise(curves, walls, full, budget=6)
    assert tpe.reach == [1, 4] and tpe.within_third == 1 and tpe.at_least_random == 2   # a third of 6: 2
    assert random.reach == [6, 1] and random.within_third == 1
    assert tpe.median_reach == 2.5 and random.median_reach == 3.5
    args = type("Args", (), {"budget": 6, "seeds": [0, 1]})
    assert "| tpe | 0.9000 ± 0.0500 | 1, 4 | 0.67 | 2.5 | 1 of 2 | 2 of 2 | 1.0 | 1 |" in \
        search_efficiency.table("space", [random, tpe], args, (10, 10))


def test_overhead_breaks_the_wall_time_down(ray_session, capsys):
    m = overhead.main(["--", "--num-samples", "2", "--max-epochs", "2"])
    assert m["code"] == 0 and m["train"] > 0 and m["wall"] > m["phases"]["search"] > 0
    assert 0 < m["mlflow_trials"] < m["phases"]["search"]      # the trials' MLflow writes, not the conclusion's
    assert "not training steps:" in capsys.readouterr().out


def test_overhead_times_the_commands_exit(capsys):
    m = overhead.main(["--exit", "--", "--num-samples", "2", "--max-epochs", "1"])
    assert m["code"] == 0, "\n".join(m["output"][-30:])
    assert m["after_wall_line"] is not None and 0 <= m["after_wall_line"] < m["total"]
    assert m["lines"] == len(m["output"]) and "from the wall-time line" in capsys.readouterr().out


def test_cifar_fast_trains_the_recipe_and_a_report_network(data_dir, capsys):
    rows = cifar_fast.main(["--data-dir", str(data_dir / "cifar-10-subset"), "--reports", "cifar_filters_strides",
                            "--report-set", "max_epochs=1", "--set", "width=8", "--set", "max_epochs=1"])
    assert [r["space"] for r in rows] == ["cifar_filters_strides", "cifar_fast"]
    assert all(0 <= r["test"] <= 1 and r["seconds"] > 0 for r in rows)
    assert "cifar_fast vs the best report network" in capsys.readouterr().out


def test_gpu_benchmark_prints_every_table(ray_session, data_dir, capsys):
    m = gpu.main(["--data-dir", str(data_dir), "--quick", "--device", "cpu", "--epochs", "2", "--loop-epochs", "1",
                  "--per-gpu", "2", "--fast-epochs", "1"])
    assert set(m["loops"]) == {"report003_mnist", "resnet9"} and all(r["eager"] > 0 for r in m["loops"].values())
    for trial in m["trials"].values():     # a whole trial: its parts add up to no more than its wall time
        parts = sum(trial[k] for k in ("setup_seconds", "epoch_seconds", "eval_seconds", "checkpoint_seconds"))
        assert trial["images"] > 0 and 0 < parts <= trial["wall"]
    assert all(r["images"] > 0 and r["trial_epochs"] == 2 for rows in m["aggregate"].values() for r in rows)
    assert [r["epochs"] for r in m["fast"]] == [1] and 0 <= m["fast"][0]["test"] <= 1
    out = capsys.readouterr().out
    assert "| workload | training loop, eager |" in out and "time to 80% test accuracy" in out


def test_search_report_times_the_search_part_of_a_written_search(capsys):
    m = search_report.main(["--trials", "12"])
    assert m["summary"]["trials"] == 12 and sum(m["summary"]["outcomes"].values()) == 12
    assert 0 < m["seconds"]["total"] < m["wall"]
    assert "| the whole command, imports included |" in capsys.readouterr().out
