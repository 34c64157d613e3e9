"""The leaderboard of a finished search, and what the command prints at the end."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from ray.tune import ResultGrid

from tuner.reference import comparison, reference_figures
from tuner.search import end_reason
from tuner.spaces import Space

TOP_ROWS = 10   # leaderboard rows printed (the CSV has them all)


def _best(history: pd.DataFrame | None, metric: str, mode: str) -> tuple[float, int]:
    if history is None or metric not in history or history[metric].dropna().empty:
        return math.nan, 0
    col = history[metric].astype(float)
    i = col.idxmax() if mode == "max" else col.idxmin()
    epoch = history["epoch"][i] if "epoch" in history else i + 1
    return float(col[i]), int(epoch)


def trial_id_of(result) -> str:
    return (result.metrics or {}).get("trial_id") or str(result.path).rstrip("/").rsplit("_", 1)[-1]


def leaderboard(results: ResultGrid, space: Space) -> pd.DataFrame:
    """One row per trial, best first: its searched settings, best score, epochs run and why it ended."""
    metric = space.metric
    rows = []
    for r in results:
        last = r.metrics or {}
        best, best_epoch = _best(r.metrics_dataframe, metric, space.mode)
        row = {"trial_id": trial_id_of(r)}
        row.update({k: r.config.get(k) for k in space.search})
        row[f"best_{metric}"] = best
        row.update(reference_figures(r.config or {}, space.reference))   # the report's figure for this setting
        row.update({"best_epoch": best_epoch, "epochs": int(last.get("epoch", 0) or 0),
                    "end_reason": end_reason(str(r.error) if r.error else None, last, space.grace_period,
                                             space.reduction_factor, space.max_epochs)})
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board = board.sort_values(f"best_{metric}", ascending=space.mode == "min", na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


def format_board(board: pd.DataFrame, rows: int = TOP_ROWS) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else v

    shown = board.head(rows).copy()
    for col in shown.columns:
        shown[col] = shown[col].map(fmt)
    text = shown.to_string(index=False, max_colwidth=60)
    more = len(board) - len(shown)
    return text + (f"\n... and {more} more trials (all in leaderboard.csv)" if more > 0 else "")


def print_summary(board: pd.DataFrame, space: Space, best_config: dict, test: dict | None, where: dict) -> None:
    print(f"\n=== Leaderboard: {space.name} ({len(board)} trials, by best {space.metric}) ===")
    print(format_board(board))
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


def reference_lines(board: pd.DataFrame, space: Space, test: dict | None) -> list[str]:
    if not space.reference or board.empty:
        return []
    ours = {space.metric: float(board.iloc[0][f"best_{space.metric}"]), **(test or {})}
    matched = int(board.filter(like="report_").notna().any(axis=1).sum())
    return ["", *comparison(space.reference, ours, matched)]


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db = db.relative_to(Path.cwd())
        except ValueError:
            pass
        return f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def where(opts, tracking, missed: list[str], space_path: Path, registered: dict | None) -> dict:
    """The closing lines: where the results are, how to look at them, how to resume."""
    from tuner.spaces import SPACES_DIR

    space_arg = space_path.stem if space_path.parent == SPACES_DIR else str(space_path)
    out = {"results": opts.experiment_path, "leaderboard": str(opts.outcome_dir / "leaderboard.csv"),
           "MLflow store": tracking.uri,
           "MLflow run": f"experiment {tracking.experiment_id}, run {tracking.parent_run_id}",
           "open the UI": ui_command(tracking.uri)}
    if registered:
        note = f" (version {registered['version']})"
        if registered["alias"] == "challenger":
            note += (f"; the champion scored {registered['previous_champion_test_accuracy']:.4f} on the test set "
                     f"and stays")
        out["best model"] = registered["uri"] + note
    out["resume with"] = f"python -m tuner.run --space {space_arg} --name {opts.name} --resume"
    if missed:
        out["not in MLflow"] = f"{len(missed)} writes failed (first: {missed[0]})"
    return out
