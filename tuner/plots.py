"""Figures of a search (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def learning_curves(histories: dict[str, pd.DataFrame], best_id: str | None, path: Path,
                    metrics=("val_accuracy", "val_loss"), title: str = "") -> Path:
    """Every trial's curves, faded, with the best trial's drawn over them; one panel per metric."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for trial_id, df in histories.items():
            if df is None or metric not in df or "epoch" not in df or trial_id == best_id:
                continue
            ax.plot(df["epoch"], df[metric], color="grey", alpha=0.3, linewidth=1)
        best = histories.get(best_id)
        if best is not None and metric in best:
            ax.plot(best["epoch"], best[metric], color="tab:blue", linewidth=2.5, marker="o", markersize=3,
                    label=f"best trial {best_id}")
            ax.legend(loc="best")
        if "train_" + metric.removeprefix("val_") in (best if best is not None else {}):
            train = "train_" + metric.removeprefix("val_")
            ax.plot(best["epoch"], best[train], color="tab:orange", linewidth=1.5, linestyle="--",
                    label=f"best trial, {train}")
            ax.legend(loc="best")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"{len(histories)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
