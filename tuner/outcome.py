"""After the search: the leaderboard, the best trials on the test set, plots, MLflow, the printout."""

from __future__ import annotations

import sys

import numpy as np

from tuner.data import ImageSet, TrialData
from tuner.evaluation import load_trial_model, score
from tuner.plots import learning_curves
from tuner.search import SearchOptions
from tuner.spaces import Space
from tuner.summary import leaderboard, print_summary, trial_id_of, where
from tuner.tracking import FAILED, Tracking, close_lost_runs, finish_search_run, log_test_score


def best_models(results, scored, space: Space, data: TrialData, test_set: ImageSet, k: int):
    """(trial id, result, model, test score) of the k best trials, each from its best checkpoint."""
    by_id = {trial_id_of(r): r for r in results}
    out = []
    for trial_id in scored["trial_id"].head(max(k, 1)):
        result = by_id[trial_id]
        checkpoint = result.get_best_checkpoint(space.metric, space.mode) or result.checkpoint
        with checkpoint.as_directory() as folder:
            model = load_trial_model(result.config, folder, data)
        out.append((trial_id, result, model, {**score(model, test_set), "test_images": len(test_set)}))
    return out


def register(best, scored, space: Space, tracking: Tracking, test_set: ImageSet, opts: SearchOptions, k: int):
    """Log and register the k best models; returns (what was registered or None, failures)."""
    from tuner.champion import Candidate, publish

    runs, safe = tracking.trial_runs.runs, tracking.trial_runs.mlflow
    if safe.offline:
        return None, ["models (MLflow did not answer)"]
    top = ",".join(tid for tid, *_ in best[:k])
    parent = safe.call("the search run", "get_run", tracking.parent_run_id)
    if parent is not FAILED and parent.data.tags.get("tuner.registered") == top:
        return None, []     # a resumed search that found nothing better: these models are registered already
    candidates = [Candidate(i + 1, tid, runs[tid], model, {k_: test[k_] for k_ in ("test_accuracy", "test_loss")},
                            float(scored.iloc[i][f"best_{space.metric}"]))
                  for i, (tid, _, model, test) in enumerate(best[:k]) if tid in runs]
    if not candidates:
        return None, ["models (no trial run in MLflow)"]
    example = (test_set.images[:2].astype(np.float32) / 255.0)
    try:
        done = publish(tracking.uri, candidates, space.name, example, len(test_set.classes),
                       {"search": opts.name, "dataset": space.dataset, "space": space.name})
    except Exception as exc:   # a registry that went away must not lose the rest of the outcome
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        print(f"warning: models not registered in MLflow: {first}", file=sys.stderr)
        return None, [f"models ({first})"]
    safe.call("registered trials", "set_tag", tracking.parent_run_id, "tuner.registered", top)
    return done, []


def conclude(results, space: Space, data: TrialData, test_set: ImageSet, opts: SearchOptions,
             tracking: Tracking, top_k: int = 1) -> int:
    board = leaderboard(results, space)
    folder = opts.outcome_dir
    board.to_csv(folder / "leaderboard.csv", index=False)
    scored = board[board[f"best_{space.metric}"].notna() & (board["epochs"] > 0)] if len(board) else board
    histories = {trial_id_of(r): r.metrics_dataframe for r in results}
    best = best_models(results, scored, space, data, test_set, top_k) if len(scored) else []
    best_id = best[0][0] if best else None
    plot = learning_curves(histories, best_id, folder / "learning_curves.png", title=f"{opts.name}: {len(board)} trials")
    close_lost_runs(tracking, set(histories))
    missed, registered, test = [], None, None
    if best:
        test = best[0][3]
        for rank, (tid, _, _, t) in enumerate(best, 1):
            log_test_score(tracking, tid, t, rank)
        registered, missed = register(best, scored, space, tracking, test_set, opts, top_k)
    metrics = {"trials": len(board)}
    if test:
        metrics.update({f"best_{space.metric}": float(scored.iloc[0][f"best_{space.metric}"]),
                        "test_accuracy": test["test_accuracy"], "test_loss": test["test_loss"]})
    missed = finish_search_run(tracking, metrics, {"tuner.best_trial_id": best_id},
                               [folder / "leaderboard.csv", plot]) + missed
    best_config = {k: v for k, v in best[0][1].config.items() if k in space.search} if best else {}
    print_summary(board, space, best_config, test, where(opts, tracking, missed, space.path, registered))
    if not best:
        print("error: no trial finished an epoch; see the errors above and in the results folder", file=sys.stderr)
        return 1
    return 0
