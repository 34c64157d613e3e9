"""The Pareto front of a set of trials: those no other trial beats on every objective at once.

Computed by Optuna (a multi-objective study's ``best_trials``), the library that samples a
multi-objective search, so the search and its reports agree on what the front is.
"""

from __future__ import annotations

import math

import optuna
import pandas as pd

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse_objectives(text: str | None) -> list[tuple[str, str]]:
    """``val_accuracy:max,params:min`` (as the search run's params hold it) -> [(metric, mode), ...]."""
    if not text:
        return []
    return [tuple(part.split(":", 1)) for part in text.split(",")]   # type: ignore[misc]


def _usable(value) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def front(frame: pd.DataFrame, objectives: list[tuple[str, str]]) -> list:
    """Index labels of the non-dominated rows of ``frame`` (a column per objective), ordered by the first
    objective (best first), then the others. Rows missing a value take no part; equal rows are all kept."""
    rows = [i for i in frame.index if all(_usable(frame.at[i, m]) for m, _ in objectives)]
    if not rows:
        return []
    study = optuna.create_study(directions=["maximize" if mode == "max" else "minimize" for _, mode in objectives])
    study.add_trials([optuna.trial.create_trial(values=[float(frame.at[i, m]) for m, _ in objectives],
                                                user_attrs={"row": position})
                      for position, i in enumerate(rows)])
    best = [rows[t.user_attrs["row"]] for t in study.best_trials]
    return sorted(best, key=lambda i: [float(frame.at[i, m]) * (-1 if mode == "max" else 1) for m, mode in objectives])

