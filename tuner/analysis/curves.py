"""Learning curves of the best trial, over every trial's (faded), from the trials' MLflow metric histories."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuner.analysis.html import Section
from tuner.analysis.source import Source
from tuner.plots import learning_curves

CURVE_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")   # logged per epoch, step = epoch


def history(client, run_id: str) -> pd.DataFrame:
    """One row per epoch: epoch and every curve metric the run logged."""
    frame = pd.DataFrame({"epoch": pd.Series(dtype=int)})
    for key in CURVE_METRICS:
        points = client.get_metric_history(run_id, key)
        if points:
            series = pd.DataFrame({"epoch": [p.step for p in points], key: [p.value for p in points]})
            frame = frame.merge(series.drop_duplicates("epoch", keep="last"), on="epoch", how="outer")
    return frame.sort_values("epoch").reset_index(drop=True)


def histories(source: Source) -> dict[str, pd.DataFrame]:
    return {run.data.tags.get("tuner.trial_id", run.info.run_id): history(source.client, run.info.run_id)
            for run in source.trials}


def curves_section(source: Source, out: Path) -> Section:
    runs = histories(source)
    best = runs.get(source.trial_id)
    trials = f"{len(runs)} trial{'s' if len(runs) != 1 else ''}"
    path = learning_curves(runs, source.trial_id, out / "learning_curves.png",
                           title=f"{source.parent.data.tags['tuner.search']}: {trials}")
    section = Section("curves", "Learning curves",
                      "Validation accuracy and loss per epoch of every trial (grey) and of the best trial, with its "
                      "training curves dashed; read from the trials' MLflow runs.")
    section.figure(path, f"best trial {source.trial_id} among {trials}")
    if best is not None and len(best):
        section.table(best, f"the best trial's metrics per epoch ({len(best)} epochs)")
        best.to_csv(section.attach(out / "best_trial_history.csv"), index=False)
        if "val_accuracy" in best:
            section.facts = {"best_val_accuracy": float(best["val_accuracy"].max())}
    return section
