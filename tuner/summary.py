"""The leaderboard of a finished search, and what the command prints at the end."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from ray.tune import ResultGrid

from tuner.asha import Floor
from tuner.pareto import front
from tuner.reference import comparison, reference_figures
from tuner.search import end_reason
from tuner.spaces import Space

TOP_ROWS = 10   # leaderboard rows printed (the CSV has them all)
SHOWN_COSTS = ("params", "latency_ms")   # what each trial's network costs, beside its score (tuner.costs)


def _best(history: pd.DataFrame | None, metric: str, mode: str) -> tuple[float, int]:
    if history is None or metric not in history or history[metric].dropna().empty:
        return math.nan, 0
    col = history[metric].astype(float)
    i = col.idxmax() if mode == "max" else col.idxmin()
    epoch = history["epoch"][i] if "epoch" in history else i + 1
    return float(col[i]), int(epoch)


def epoch_history(result) -> pd.DataFrame | None:
    """One row per trained epoch of a trial. A trial reports several epochs at once (the ``epochs`` of each
    result); an epoch trained again after a restart from an older checkpoint counts once, as last trained."""
    df = result.metrics_dataframe
    if df is None or df.empty or "epochs" not in df:
        return df
    rows = [epoch for epochs in df["epochs"] if isinstance(epochs, list) for epoch in epochs]
    if not rows:
        return df   # a rejected config: its one result, at epoch 0
    history = pd.DataFrame(rows).drop_duplicates("epoch", keep="last")
    return history.sort_values("epoch").reset_index(drop=True)


def trial_id_of(result) -> str:
    """The trial's id, from its own folder (``trial_<id>``: tuner.search.trial_name)."""
    name = str(result.path).rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("trial_") if name.startswith("trial_") else (result.metrics or {}).get("trial_id", name)


def last_result(result) -> dict:
    """The trial's last result, or nothing when Ray gives it another trial's: after a node was lost, a trial
    whose reused actor died with the node was seen holding that actor's previous trial's last result."""
    metrics = result.metrics or {}
    return metrics if metrics.get("trial_id") in (None, trial_id_of(result)) else {}


def leaderboard(results: ResultGrid, space: Space, floor: Floor | None = None) -> pd.DataFrame:
    """One row per trial, best first: its searched settings, best score, what its network costs, epochs run
    and why it ended. A multi-objective search's rows are ranked by its objectives in order, and its Pareto
    front is named in the ``pareto`` column (pareto-1 is the best first objective). ``floor``: the search's
    chance floor, so that a trial ASHA stopped at chance level says so."""
    metric = space.metric
    costs = [*SHOWN_COSTS, *(m for m, _ in space.objectives[1:] if m not in SHOWN_COSTS)]
    rows = []
    for r in results:
        last = last_result(r)
        best, best_epoch = _best(epoch_history(r), metric, space.mode)
        row = {"trial_id": trial_id_of(r)}
        row.update({k: r.config.get(k) for k in space.search})
        row[f"best_{metric}"] = best
        row.update({k: float(last.get(k, math.nan)) for k in costs})
        row.update(reference_figures(r.config or {}, space.reference))   # the report's figure for this setting
        row.update({"best_epoch": best_epoch, "epochs": int(last.get("epoch", 0) or 0),
                    "end_reason": end_reason(str(r.error) if r.error else None, last, space.grace_period,
                                             space.reduction_factor, space.max_epochs, floor,
                                             space.stopper)})
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    ranked = board_objectives(space)
    board = board.sort_values([m for m, _ in ranked], ascending=[mode == "min" for _, mode in ranked],
                              na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    if space.multi_objective:
        on_front = front(board[board["epochs"] > 0], ranked)
        board.insert(1, "pareto", "")
        board.loc[on_front, "pareto"] = [f"pareto-{i}" for i in range(1, len(on_front) + 1)]
    return board.reset_index(drop=True)


def board_objectives(space: Space) -> list[tuple[str, str]]:
    """The leaderboard's columns a search ranks by, with their modes: the best score, then the others."""
    return [(f"best_{space.metric}", space.mode), *space.objectives[1:]]


def front_rows(board: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front's rows, pareto-1 first (empty for a single-objective search)."""
    if "pareto" not in board:
        return board.iloc[0:0]
    on_front = board[board["pareto"].astype(str).str.startswith("pareto-")]
    order = on_front["pareto"].str.removeprefix("pareto-").astype(int)
    return on_front.loc[order.sort_values().index]


def format_board(board: pd.DataFrame, rows: int = TOP_ROWS) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else v

    def count(v):   # parameters: whole numbers, with thousands separators
        return f"{v:,.0f}" if isinstance(v, float) and math.isfinite(v) else fmt(v)

    shown = board.head(rows).copy()
    for col in shown.columns:
        shown[col] = shown[col].map(count if col == "params" else fmt)
    text = shown.to_string(index=False, max_colwidth=60)
    more = len(board) - len(shown)
    return text + (f"\n... and {more} more trials (all in leaderboard.csv)" if more > 0 else "")


def print_summary(board: pd.DataFrame, space: Space, best_config: dict, test: dict | None, where: dict,
                  front_tests: dict[str, dict] | None = None) -> None:
    print(f"\n=== Leaderboard: {space.name} ({len(board)} trials, by best {space.metric}) ===")
    print(format_board(board))
    if space.multi_objective:
        print_front(board, space, front_tests or {})
    else:
        print("\nBest config:")
        for k in sorted(best_config):
            print(f"  {k}: {best_config[k]}")
    if test:
        print(f"\nBest trial {board.iloc[0]['trial_id']}: {space.metric} {board.iloc[0][f'best_{space.metric}']:.4f}, "
              f"test accuracy {test['test_accuracy']:.4f} (test loss {test['test_loss']:.4f}, "
              f"{test['test_images']} held-out images)")
    for line in reference_lines(board, space, test):   # the report's figures against the search's
        print(line)
    print()
    for label, value in where.items():
        print(f"{label:>14}: {value}")


def print_front(board: pd.DataFrame, space: Space, tests: dict[str, dict]) -> None:
    """A multi-objective search's outcome: its Pareto front, with each model's test accuracy and settings."""
    rows = front_rows(board)
    against = " against ".join(f"{m} ({mode})" for m, mode in space.objectives)
    print(f"\n=== Pareto front: {against}; {len(rows)} of {len(board)} trials ===")
    if rows.empty:
        return
    shown = rows[["pareto", "trial_id", *(m for m, _ in board_objectives(space))]].copy()
    shown["test_accuracy"] = [tests.get(t, {}).get("test_accuracy", math.nan) for t in shown["trial_id"]]
    print(format_board(shown.join(rows[list(space.search)]), rows=len(shown)))


def reference_lines(board: pd.DataFrame, space: Space, test: dict | None) -> list[str]:
    if not space.reference or board.empty:
        return []
    ours = {space.metric: float(board.iloc[0][f"best_{space.metric}"]), **(test or {})}
    matched = int(board.filter(like="report_").notna().any(axis=1).sum())
    return ["", *comparison(space.reference, ours, matched)]


def ui_command(uri: str) -> str:
    from tuner.guards import redact

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db = db.relative_to(Path.cwd())
        except ValueError:
            pass
        return f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    return f"open {redact(uri)} in a browser"


def where(opts, tracking, missed: list[str], registered: dict | None) -> dict:
    """The closing lines: where the results are, how to look at them, how to resume."""
    from tuner.guards import redact
    from tuner.search import resume_command

    out = {"results": redact(opts.experiment_path), "leaderboard": str(opts.outcome_dir / "leaderboard.csv"),
           "MLflow store": redact(tracking.uri),
           "MLflow run": f"experiment {tracking.experiment_id}, run {tracking.parent_run_id}",
           "open the UI": ui_command(tracking.uri)}
    if registered:
        note = f" (version {registered['version']})"
        if registered.get("note"):
            note += f"; {registered['note']}"
        out["best model"] = registered["uri"] + note
        if registered.get("front"):
            out["Pareto front"] = f"models:/{registered['name']}@pareto-1 ... @pareto-{len(registered['front'])}"
    out["resume with"] = resume_command(opts)
    if missed:
        out["not in MLflow"] = f"{len(missed)} writes failed (first: {missed[0]})"
    return out
