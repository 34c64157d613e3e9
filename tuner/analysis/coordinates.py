"""Every trial at once: parallel coordinates (each searched setting, then the best score) and the score
against each of the two most important settings. Trials ASHA stopped are drawn faded: their score is from
fewer epochs than the others'."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution

from tuner.analysis.figures import message, plain_log_axis, save
from tuner.analysis.html import Section
from tuner.analysis.trials import SearchRecord

FADED = 0.18          # alpha of stopped trials
JITTER = 0.08         # spread of points over a category's position, in category widths
CMAP = "viridis"


def axis(dist: BaseDistribution, values: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] along the distribution's range (log where it is log), and tick positions with
    labels in the setting's own units."""
    if isinstance(dist, CategoricalDistribution):
        n = len(dist.choices)
        where = {str(c): (i / (n - 1) if n > 1 else 0.5) for i, c in enumerate(dist.choices)}
        return np.array([where.get(str(v), np.nan) for v in values]), [(p, c) for c, p in where.items()]
    low, high = float(dist.low), float(dist.high)
    scale = np.log if dist.log else (lambda x: np.asarray(x, dtype=float))
    span = scale(high) - scale(low) or 1.0
    unit = (scale(values.astype(float).to_numpy()) - scale(low)) / span
    ticks = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    mid = np.exp((np.log(low) + np.log(high)) / 2) if dist.log else (low + high) / 2
    return unit, ticks[:1] + [(0.5, f"{mid:.3g}")] + ticks[1:]


def scored(record: SearchRecord) -> pd.DataFrame:
    """The trials with a score (they trained at least one epoch), stopped ones first (drawn underneath)."""
    t = record.trials[record.trials["epochs"] > 0].dropna(subset=["best"])
    return t.assign(_stopped=t["outcome"] == "stopped").sort_values("_stopped", ascending=False)


def parallel(record: SearchRecord, order: list[str], path: Path) -> Path:
    t = scored(record)
    if t.empty:
        return message(path, "no trial has a score")
    columns = {name: axis(record.space[name], t[name]) for name in order}
    lo, hi = float(t["best"].min()), float(t["best"].max())
    score = (t["best"].to_numpy() - lo) / ((hi - lo) or 1.0)
    columns[record.metric] = (score, [(0.0, f"{lo:.4g}"), (1.0, f"{hi:.4g}")])
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(columns)), 5))
    cmap, x = plt.get_cmap(CMAP), np.arange(len(columns))
    ys = np.column_stack([values for values, _ in columns.values()])
    for row, stopped, s in zip(ys, t["_stopped"], score):
        ax.plot(x, row, color=cmap(s), alpha=FADED if stopped else 0.9, linewidth=0.8 if stopped else 1.6)
    for i, (_, ticks) in enumerate(columns.values()):
        ax.axvline(i, color="black", linewidth=0.8)
        for position, label in ticks:
            ax.text(i + 0.03, position, label, fontsize=7, va="center")
    ax.set_xticks(x, list(columns), rotation=30, ha="right")
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap=cmap), ax=ax, label=f"best {record.metric}")
    ax.set_title(f"{len(t)} trials; faded: stopped by {record.settings.stopper}")
    return save(fig, path)


def marginal(ax, record: SearchRecord, name: str, t: pd.DataFrame, seed: int) -> None:
    dist = record.space[name]
    categorical = isinstance(dist, CategoricalDistribution)
    if categorical:
        where = {str(c): i for i, c in enumerate(dist.choices)}
        x = np.array([where.get(str(v), np.nan) for v in t[name]], dtype=float)
        x += np.random.default_rng(seed).uniform(-JITTER, JITTER, len(x))
        ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
    else:
        x = t[name].astype(float).to_numpy()
        if dist.log:
            plain_log_axis(ax)
    stopped = t["_stopped"].to_numpy()
    ax.scatter(x[stopped], t["best"][stopped], facecolors="none", edgecolors="tab:gray", alpha=0.6,
               label=f"stopped by {record.settings.stopper}")
    ax.scatter(x[~stopped], t["best"][~stopped], color="tab:blue", label="not stopped")
    ax.set_xlabel(name)
    ax.set_ylabel(f"best {record.metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def marginals(record: SearchRecord, names: list[str], path: Path, seed: int) -> Path:
    t = scored(record)
    if t.empty or not names:
        return message(path, "no trial has a score")
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        marginal(ax, record, name, t, seed)
    fig.tight_layout()
    return save(fig, path)


def coordinates_sections(record: SearchRecord, order: list[str], out: Path, seed: int) -> list[Section]:
    par = Section("parallel", "Every trial's settings and score",
                  f"Parallel coordinates: one line per trial that trained, through its searched settings (most "
                  f"important first) to its best {record.metric}, coloured by that score. Trials "
                  f"{record.settings.stopper} stopped are faded: their score is from fewer epochs.")
    par.figure(parallel(record, order, out / "parallel_coordinates.png"), "searched settings -> best score")
    top = order[:2]
    mar = Section("marginals", "The score against the most important settings",
                  f"Best {record.metric} of each trial against {' and '.join(top) or 'no setting'}, the "
                  f"{len(top)} most important settings (fANOVA at the first rung); hollow grey: stopped by "
                  f"{record.settings.stopper}.")
    mar.figure(marginals(record, top, out / "marginals.png", seed), f"best {record.metric} against {', '.join(top)}")
    return [par, mar]
