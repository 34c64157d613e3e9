"""Interrupted searches resume; crashing trials are retried from their checkpoints."""

from __future__ import annotations

import glob
import json
import pickle
from collections import Counter

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.processes import Search, child_runs, wait_until

pytestmark = pytest.mark.slow
SAMPLES = 8


def newest(folder, pattern: str):
    return pickle.load(open(sorted(glob.glob(str(folder / pattern)))[-1], "rb"))


def test_a_killed_search_resumes_where_it_was(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", "quickstart", "--name", "k", "--storage-path", str(tmp_path / "rr"), "--tracking-uri", uri]
    first = Search(*args, "--num-samples", str(SAMPLES), "--max-epochs", "20", "--seed", "3")
    finished_before = {}
    try:
        def some_finished():
            runs = child_runs(uri, "quickstart")
            done = {r.data.tags["tuner.trial_id"]: r for r in runs if r.info.status == "FINISHED"}
            running = [r for r in runs if r.info.status == "RUNNING"]
            if len(done) >= 3 and running:
                finished_before.update(done)
                return True
            return False

        assert wait_until(some_finished), first.log.read_text()[-3000:]
    finally:
        first.kill()                                   # SIGKILL, mid-search
    code, out = Search(*args[2:], "--resume").wait()    # the space and the flags it started with are its own
    assert code == 0, out[-3000:]

    folder = tmp_path / "rr" / "k"
    flags = json.loads((folder / "search_settings.json").read_text())["flags"]
    assert (flags["seed"], flags["num_samples"], flags["max_epochs"]) == (3, SAMPLES, 20)
    board = pd.read_csv(folder / "leaderboard.csv")
    assert len(board) == SAMPLES and board["trial_id"].is_unique
    client = MlflowClient(uri, registry_uri=uri)
    kept = {t: r for t, r in finished_before.items() if t in set(board["trial_id"])}
    for trial_id in set(finished_before) - set(kept):
        # Started and ended between two of Ray's experiment snapshots, the last one before the kill: Ray
        # never recorded it, so the resumed search ran another trial in its place, and its run says so.
        lost = client.get_run(finished_before[trial_id].info.run_id)
        assert lost.data.tags["tuner.end_reason"].startswith("lost:") and lost.info.status == "KILLED"
    assert kept
    for trial_id, run in kept.items():     # finished trials Ray recorded kept, with their results
        row = board[board["trial_id"] == trial_id]
        assert len(row) == 1
        assert row["epochs"].iloc[0] == int(run.data.metrics.get("epoch", 0))   # 0: a rejected architecture
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert row["best_val_accuracy"].iloc[0] == pytest.approx(max(history, default=0.0))

    runs = child_runs(uri, "quickstart")               # no duplicate runs, no step logged twice
    counts = Counter(r.data.tags["tuner.trial_id"] for r in runs)
    assert set(board["trial_id"]) <= set(counts) and max(counts.values()) == 1
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert len(steps) == len(set(steps))
        assert run.info.status in ("FINISHED", "KILLED")

    # The searcher came back with every trial it had told Optuna about: the study holds all trials, done
    # (complete, or pruned where ASHA stopped them or their network could not be built).
    study = newest(folder, "searcher-state-*.pkl")["_ot_study"]
    assert len(study.trials) == SAMPLES and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    stopped = set(board.loc[board["end_reason"].str.startswith(("stopped by ASHA", "invalid")), "trial_id"])
    pruned = {tid for tid, t in newest(folder, "searcher-state-*.pkl")["_ot_trials"].items()
              if study.trials[t.number].state.name == "PRUNED"}
    assert pruned == stopped
    # ASHA's rung records came back too: trials that finished before the kill never report again, so
    # they can only be in the resumed scheduler's rungs if the records were restored.
    rungs = next(s for s in newest(folder, "callback-states-*.pkl").values() if s and "rungs" in s)["rungs"]
    recorded = set().union(*[set(r) for bracket in rungs for r in bracket])
    reached_a_rung = {t for t, run in kept.items() if run.data.metrics.get("epoch", 0) >= 2}
    assert reached_a_rung and reached_a_rung <= recorded


def test_a_crashing_trial_is_retried_from_its_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"TUNER_FAULT_EPOCH": "3", "TUNER_FAULT_MARKER": str(tmp_path / "crashed-once")}
    code, out = Search("--space", "quickstart", "--name", "f", "--storage-path", str(tmp_path / "rr"),
                       "--tracking-uri", uri, "--num-samples", "3", "--max-epochs", "6", "--max-concurrent", "1",
                       "--max-failures", "2", env=env).wait()
    assert code == 0, out[-3000:]
    assert (tmp_path / "crashed-once").exists() and "injected fault at epoch 3" in out
    (crashed,) = [r for r in child_runs(uri, "quickstart") if r.data.tags.get("tuner.retries")]
    # It went on from its epoch-2 checkpoint (ASHA's first rung, where it reported): epochs 1..N each once,
    # in order, not 1, 2, 1, 2, 3, ...
    trial_dir = tmp_path / "rr" / "f" / f"trial_{crashed.data.tags['tuner.trial_id']}"
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    assert reports[0]["epoch"] == 2
    epochs = [e["epoch"] for r in reports for e in r["epochs"]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 3
    steps = [m.step for m in MlflowClient(uri, registry_uri=uri).get_metric_history(crashed.info.run_id, "val_accuracy")]
    assert steps == list(range(1, len(epochs) + 1))
    board = pd.read_csv(tmp_path / "rr" / "f" / "leaderboard.csv")
    assert len(board) == 3 and not board["end_reason"].str.startswith("failed").any()


def test_a_trial_that_fails_for_good_is_failed_in_mlflow_with_its_error(tmp_path):
    # Also: a relative sqlite URI is the current folder's, artifacts beside it; --log-top-k 0 misses nothing.
    env = {"TUNER_FAULT_EPOCH": "2", "TUNER_FAULT_MARKER": str(tmp_path / "crashed-once")}
    code, out = Search("--space", "quickstart", "--name", "g", "--storage-path", str(tmp_path / "rr"),
                       "--tracking-uri", "sqlite:///store/mlflow.db", "--num-samples", "3", "--max-epochs", "2",
                       "--max-concurrent", "1", "--max-failures", "0", "--log-top-k", "0",
                       env=env, cwd=tmp_path).wait()
    assert code == 0, out[-3000:]
    runs = child_runs(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "quickstart")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 3 and len(failed) == 1, [(r.info.status, r.data.tags.get("tuner.end_reason")) for r in runs]
    reason = failed[0].data.tags["tuner.end_reason"]
    assert reason == "failed: RuntimeError: injected fault at epoch 2 (TUNER_FAULT_EPOCH)", reason
    assert (tmp_path / "store" / "artifacts" / "quickstart").is_dir()
    assert "not in MLflow" not in out, out[-2000:]
