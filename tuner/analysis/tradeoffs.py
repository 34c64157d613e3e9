"""What the score costs: each trial's parameter count and inference latency (batch 1 and a large batch, as
the trial measured them on its own device, see ``tuner.costs``) beside its best score, with the Pareto front
of score against each cost marked: the trials no other trial beats on both at once."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from tuner.analysis.figures import message, plain_log_axis, save
from tuner.analysis.html import Section
from tuner.analysis.trials import SearchRecord
from tuner.costs import LARGE_BATCH
from tuner.pareto import front

COSTS = {"params": "parameters", "latency_ms": "latency, 1 image (ms)",
         "latency_batch_ms": f"latency, {LARGE_BATCH} images (ms)"}


def fronts(record: SearchRecord) -> dict[str, list]:
    """Cost -> the trials (row labels) on the front of best score against that cost, best score first."""
    t = record.trials[record.trials["epochs"] > 0]
    return {cost: front(t, [("best", record.settings.mode), (cost, "min")]) for cost in COSTS}


def panel(ax, record: SearchRecord, cost: str, on_front: list) -> None:
    t = record.trials[record.trials["epochs"] > 0].dropna(subset=["best", cost])
    stopped = t["outcome"] == "stopped"
    ax.scatter(t.loc[stopped, cost], t.loc[stopped, "best"], facecolors="none", edgecolors="tab:gray", alpha=0.6,
               label=f"stopped by {record.settings.stopper}")
    ax.scatter(t.loc[~stopped, cost], t.loc[~stopped, "best"], color="tab:blue", alpha=0.8, label="not stopped")
    line = t.loc[on_front].sort_values(cost)
    ax.step(line[cost], line["best"], where="post", color="tab:red", linewidth=1.2)
    ax.scatter(line[cost], line["best"], s=70, facecolors="none", edgecolors="tab:red", linewidths=1.5,
               label="Pareto front")
    plain_log_axis(ax)
    ax.set_xlabel(COSTS[cost])
    ax.set_ylabel(f"best {record.metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def tradeoff_figure(record: SearchRecord, found: dict[str, list], path: Path) -> Path:
    if record.trials[list(COSTS)].isna().all().all():
        return message(path, "no trial reported its size or latency")
    fig, axes = plt.subplots(1, len(COSTS), figsize=(6 * len(COSTS), 4.2), squeeze=False)
    for ax, cost in zip(axes[0], COSTS):
        panel(ax, record, cost, found[cost])
    fig.tight_layout()
    return save(fig, path)


def cost_table(record: SearchRecord, found: dict[str, list]) -> pd.DataFrame:
    """Every trial with a score: its score, its costs and which fronts it is on (its place, 1 = best score)."""
    t = record.trials[record.trials["epochs"] > 0]
    table = t[["trial_id", "outcome", "epochs", "best", *COSTS, *record.space]].copy()
    for cost, rows in found.items():
        table[f"front_{cost}"] = pd.Series({row: place for place, row in enumerate(rows, 1)}, dtype="Int64")
    return table.sort_values("best", ascending=record.settings.mode == "min").reset_index(drop=True)


def tradeoffs_section(record: SearchRecord, out: Path) -> Section:
    found = fronts(record)
    table = cost_table(record, found)
    table.to_csv(out / "tradeoffs.csv", index=False)
    s = Section("tradeoffs", "What the score costs: size and speed",
                f"Each trial's best {record.metric} against its network's parameter count and its inference "
                f"latency for one image and for {LARGE_BATCH}, timed by the trial on its own device after its "
                f"first epochs (the median of a few forward passes in eval mode). Red: the Pareto front, the "
                f"trials no other trial beats on score and cost at once.")
    s.attach(out / "tradeoffs.csv")
    s.figure(tradeoff_figure(record, found, out / "tradeoffs.png"), f"best {record.metric} against size and latency")
    on_params = table[table["front_params"].notna()].sort_values("front_params")
    s.table(on_params.drop(columns=[c for c in table if c.startswith("front_")]),
            f"the Pareto front of {record.metric} against parameters, best score first")
    s.facts = {"front_params": [record.trials.at[i, "trial_id"] for i in found["params"]]}
    return s
