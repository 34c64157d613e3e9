"""After the search: the leaderboard, the best trials on the test set, plots, MLflow, the printout."""

from __future__ import annotations

import sys

import numpy as np
from mlflow.entities import RunTag

from tuner.data import ImageSet, TrialData
from tuner.evaluation import load_trial_model, score
from tuner.guards import redact
from tuner.plots import learning_curves
from tuner.search import SearchOptions, search_floor
from tuner.spaces import Space
from tuner.summary import epoch_history, front_rows, leaderboard, print_summary, trial_id_of, where
from tuner.tracking import FAILED, Tracking, close_lost_runs, finish_search_run, log_test_score


def chosen_trials(scored, k: int) -> list[str]:
    """The trials whose models are scored on the test set (and logged): the k best (at least the best), and
    a multi-objective search's Pareto front; in leaderboard order."""
    front = set(front_rows(scored)["trial_id"])
    return [t for i, t in enumerate(scored["trial_id"]) if i < max(k, 1) or t in front]


def best_models(results, scored, space: Space, data: TrialData, test_set: ImageSet, k: int):
    """(trial id, result, model, test score) of the chosen trials (``chosen_trials``), each with its best
    epoch's weights (kept in the trial's latest checkpoint)."""
    by_id = {trial_id_of(r): r for r in results}
    out = []
    for trial_id in chosen_trials(scored, k):
        result = by_id[trial_id]
        with result.checkpoint.as_directory() as folder:
            model = load_trial_model(result.config, folder, data)
        out.append((trial_id, result, model, {**score(model, test_set), "test_images": len(test_set)}))
    return out


def test_set_digest(test_set: ImageSet) -> str:
    """Names the exact test set (labels and images): test scores compare only under the same digest."""
    import hashlib

    return hashlib.blake2b(test_set.labels.tobytes() + test_set.images.tobytes(), digest_size=16).hexdigest()


def register(best, scored, space: Space, tracking: Tracking, test_set: ImageSet, opts: SearchOptions, k: int):
    """Log and register the k best models (a multi-objective search: its Pareto front too, unless k is 0);
    returns (what was registered or None, failures)."""
    from tuner.bundle import describe
    from tuner.champion import Candidate, publish

    runs, safe = tracking.trial_runs.runs, tracking.trial_runs.mlflow
    if safe.offline:
        return None, ["models (MLflow did not answer)"]
    chosen = best if space.multi_objective and k > 0 else best[:k]
    if not chosen:
        return None, []      # --log-top-k 0: no model asked for, none missing
    top = ",".join(tid for tid, *_ in chosen)
    parent = safe.call("the search run", "get_run", tracking.parent_run_id)
    if parent is not FAILED and parent.data.tags.get("tuner.registered") == top:
        return already_registered(parent.data.tags), []   # a resumed search that ended as it had already
    val = scored.set_index("trial_id")[f"best_{space.metric}"]
    shape = test_set.images.shape[1:]
    candidates = [Candidate(i + 1, tid, runs[tid], model, {k_: test[k_] for k_ in ("test_accuracy", "test_loss")},
                            float(val[tid]), describe(model, result.config, shape, test_set.classes))
                  for i, (tid, result, model, test) in enumerate(chosen) if tid in runs]
    if not candidates:
        return None, ["models (no trial run in MLflow)"]
    example = (test_set.images[:2].astype(np.float32) / 255.0)
    try:
        done = publish(tracking.uri, candidates, space.name, example, len(test_set.classes),
                       {"search": opts.name, "dataset": space.dataset, "space": space.name,
                        "test_digest": test_set_digest(test_set), "test_images": len(test_set)})
        if space.multi_objective:
            done["front"] = register_front(tracking.uri, space.name, candidates, done["versions"], scored)
    except Exception as exc:   # a registry that went away must not lose the rest of the outcome
        first = redact(str(exc).strip().splitlines()[0][:200]) if str(exc).strip() else type(exc).__name__
        print(f"warning: models not registered in MLflow: {first}", file=sys.stderr)
        return None, [f"models ({first})"]
    safe.call("registered models", "log_batch", tracking.parent_run_id,
              tags=[RunTag("tuner.registered", top), RunTag("tuner.registered_uri", done["uri"]),
                    RunTag("tuner.registered_version", str(done["version"]))])
    return done, []


def already_registered(tags: dict) -> dict | None:
    """What the search registered when it first ended, from its run's tags, for the summary's line."""
    if "tuner.registered_uri" not in tags:
        return None          # registered before the run kept the model's URI
    return {"uri": tags["tuner.registered_uri"], "version": tags["tuner.registered_version"],
            "note": "registered when the search first ended"}


def register_front(uri: str, name: str, candidates, versions: list[str], scored) -> dict[str, str]:
    """The Pareto front's aliases (pareto-1, ...) on the versions just registered."""
    from tuner.champion import alias_front

    version_of = {c.trial_id: v for c, v in zip(candidates, versions)}
    front = [t for t in front_rows(scored)["trial_id"] if t in version_of]
    return alias_front(uri, name, {f"pareto-{i}": version_of[t] for i, t in enumerate(front, 1)})


def tag_front(tracking: Tracking, scored) -> str:
    """Each front trial's run is tagged with its place (tuner.pareto); returns the front's trial ids, in order."""
    safe, runs = tracking.trial_runs.mlflow, tracking.trial_runs.runs
    front = list(front_rows(scored)["trial_id"])
    for i, tid in enumerate(front, 1):
        if tid in runs:
            safe.call(f"Pareto front place of trial {tid}", "set_tag", runs[tid], "tuner.pareto", str(i))
    return ",".join(front)


def conclude(results, space: Space, data: TrialData, test_set: ImageSet, opts: SearchOptions,
             tracking: Tracking, top_k: int = 1) -> int:
    board = leaderboard(results, space, search_floor(space, data))
    folder = opts.outcome_dir
    board.to_csv(folder / "leaderboard.csv", index=False)
    scored = board[board[f"best_{space.metric}"].notna() & (board["epochs"] > 0)] if len(board) else board
    histories = {trial_id_of(r): epoch_history(r) for r in results}
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
    metrics, tags = {"trials": len(board)}, {"tuner.best_trial_id": best_id}
    if test:
        metrics.update({f"best_{space.metric}": float(scored.iloc[0][f"best_{space.metric}"]),
                        "test_accuracy": test["test_accuracy"], "test_loss": test["test_loss"]})
    if space.multi_objective:
        tags["tuner.front"] = tag_front(tracking, scored)
        metrics["front_size"] = len(front_rows(scored))
    missed = finish_search_run(tracking, metrics, tags, [folder / "leaderboard.csv", plot]) + missed
    best_config = {k: v for k, v in best[0][1].config.items() if k in space.search} if best else {}
    print_summary(board, space, best_config, test, where(opts, tracking, missed, registered),
                  {tid: t for tid, _, _, t in best})
    if not best:
        print("error: no trial finished an epoch; see the errors above and in the results folder", file=sys.stderr)
        return 1
    return 0
