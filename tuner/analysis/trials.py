"""A search's trials as MLflow holds them: one row per trial, from the trials' runs (their params, tags and
metric histories) and the search's run (what was searched, how, ASHA's settings).

Nothing else is read (no Ray results), so the search's report works wherever the tracking store is reached.
The searched settings' distributions are rebuilt from the search run's params (``search.lr.loguniform``
...) the way the search built them (``tuner.spaces`` -> Ray Tune -> Optuna), so the report's Optuna
studies have the very space the sampler had.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search.optuna import OptunaSearch

from tuner.costs import COST_METRICS
from tuner.pareto import parse_objectives
from tuner.spaces import DISTRIBUTIONS, stopper_name

# Why a trial ended (its tuner.end_reason tag starts with the text) -> a short outcome. "stopped by ": by ASHA,
# or by an Optuna pruner (scheduler.pruner).
OUTCOMES = {"completed": "completed", "stopped by ": "stopped", "early-stopped by patience": "patience",
            "invalid architecture": "invalid", "diverged": "diverged", "failed": "failed", "lost": "lost"}
TIMES = {"train_seconds": ("epoch_seconds",), "eval_seconds": ("eval_seconds",),
         "overhead_seconds": ("setup_seconds", "checkpoint_seconds", "report_seconds")}


@dataclass
class Settings:
    """How the search ran, from its run's params."""

    metric: str
    mode: str
    grace_period: int
    reduction_factor: int
    max_t: int
    objectives: list[tuple[str, str]]         # empty for a single-objective search
    cpus_per_trial: float
    gpus_per_trial: float
    searcher: str
    pruner: str = "asha"                      # who stopped trials early: ASHA, or an Optuna pruner

    @property
    def milestones(self) -> list[int]:
        """The epochs where ASHA decides: grace * factor**k below max_t (rung k at the k-th)."""
        out, epoch = [], self.grace_period
        while epoch < self.max_t:
            out.append(epoch)
            epoch *= self.reduction_factor
        return out

    @property
    def stopper(self) -> str:
        """Who stopped trials early: ASHA, or the Optuna pruner the space named."""
        return stopper_name(self.pruner)

    @property
    def device_unit(self) -> str:
        return "GPU-seconds" if self.gpus_per_trial > 0 else "CPU-core-seconds"

    @property
    def device_share(self) -> float:
        return self.gpus_per_trial if self.gpus_per_trial > 0 else self.cpus_per_trial


@dataclass
class SearchRecord:
    client: MlflowClient
    name: str
    parent: Run                                    # the search's run
    runs: list[Run]                                # its trials' runs
    settings: Settings
    space: dict[str, BaseDistribution]             # searched setting -> its Optuna distribution
    trials: pd.DataFrame                           # one row per trial (see trial_row)
    histories: dict[str, pd.Series] = field(default_factory=dict)   # trial id -> the metric per epoch

    @property
    def metric(self) -> str:
        return self.settings.metric


def settings_of(parent: Run) -> Settings:
    p = parent.data.params
    return Settings(p.get("metric", "val_accuracy"), p.get("mode", "max"), int(p.get("grace_period", 1)),
                    int(p.get("reduction_factor", 3)), int(p.get("max_t", 1)), parse_objectives(p.get("objectives")),
                    float(p.get("cpus_per_trial", 1)), float(p.get("gpus_per_trial", 0)), p.get("searcher", ""),
                    p.get("pruner", "asha"))


def distributions(parent: Run) -> dict[str, BaseDistribution]:
    """The searched settings' Optuna distributions, rebuilt from ``search.KEY.KIND = ARGS`` params."""
    domains = {}
    for key, text in parent.data.params.items():
        if key.startswith("search.") and key.count(".") == 2:
            _, name, kind = key.split(".")
            domains[name] = DISTRIBUTIONS[kind][1](ast.literal_eval(text))
    return OptunaSearch.convert_search_space(domains) if domains else {}


def parse_value(text: str | None, dist: BaseDistribution):
    """An MLflow param (text) as a value of ``dist``: the choice it names, or the number."""
    if text is None:
        return None
    if isinstance(dist, CategoricalDistribution):
        by_text = {str(c): c for c in dist.choices}
        return by_text.get(text, text)
    try:
        return int(float(text)) if isinstance(dist, IntDistribution) else float(text)
    except ValueError:
        return None


def covering(dist: BaseDistribution, values: list) -> BaseDistribution:
    """``dist``, widened where a trial's value is outside it (a start point off the grid, a value a
    quantised Ray domain rounded past a bound), so that every trial can join an Optuna study."""
    present = [v for v in values if v is not None]
    if all(dist._contains(dist.to_internal_repr(v)) for v in present):
        return dist
    if isinstance(dist, CategoricalDistribution):
        return CategoricalDistribution([*dist.choices, *dict.fromkeys(v for v in present if v not in dist.choices)])
    low, high = min([dist.low, *present]), max([dist.high, *present])
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(low), int(high), log=dist.log)
    return FloatDistribution(low, high, log=dist.log)


def outcome(reason: str | None) -> str:
    for prefix, short in OUTCOMES.items():
        if reason and reason.startswith(prefix):
            return short
    return "unfinished"


def history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """A metric per epoch (step = epoch), each epoch once. An infinite score (a diverged trial's worst loss)
    is stored by MLflow as the largest double: read back as missing, as it scores nothing."""
    points = client.get_metric_history(run_id, key)
    series = pd.Series({p.step: p.value for p in points}, dtype=float).sort_index()
    return series.where(series.abs() < 1e300)


def trial_row(client: MlflowClient, run: Run, settings: Settings, space: dict, start_ms: int) -> tuple[dict, pd.Series]:
    """One trial: its settings, outcome, epochs, best score, costs, and where its time went."""
    tags, metrics = run.data.tags, run.data.metrics
    scores = history(client, run.info.run_id, settings.metric)
    sign = 1.0 if settings.mode == "max" else -1.0
    best_epoch = int((scores * sign).idxmax()) if len(scores) else 0
    end = run.info.end_time
    row = {"trial_id": tags.get("tuner.trial_id", run.info.run_id[:8]), "run_id": run.info.run_id,
           "outcome": outcome(tags.get("tuner.end_reason")), "end_reason": tags.get("tuner.end_reason", ""),
           "epochs": int(scores.index.max()) if len(scores) else 0,
           "best": float(scores[best_epoch]) if len(scores) else np.nan, "best_epoch": best_epoch,
           **{k: metrics.get(k, np.nan) for k in COST_METRICS},
           "start_seconds": (run.info.start_time - start_ms) / 1000.0,
           "wall_seconds": (end - run.info.start_time) / 1000.0 if end else np.nan}
    for column, keys in TIMES.items():
        row[column] = float(sum(history(client, run.info.run_id, k).sum() for k in keys))
    # The seconds the trial measured itself working, not its run's start to end: that also holds the hours a
    # search stood interrupted before --resume. A trial that measured nothing (rejected) counts its wall time.
    busy = sum(row[column] for column in TIMES)
    row["device_seconds"] = (busy if busy > 0 else row["wall_seconds"]) * settings.device_share
    row.update({name: parse_value(run.data.params.get(name), dist) for name, dist in space.items()})
    return row, scores


def load_record(client: MlflowClient, parent: Run, runs: list[Run]) -> SearchRecord:
    settings, space = settings_of(parent), distributions(parent)
    rows, histories = [], {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        row, scores = trial_row(client, run, settings, space, parent.info.start_time)
        rows.append(row)
        histories[row["trial_id"]] = scores
    trials = pd.DataFrame(rows)
    if len(trials):
        space = {name: covering(dist, list(trials[name])) for name, dist in space.items()}
    return SearchRecord(client, parent.data.tags.get("tuner.search", parent.info.run_name), parent, runs, settings,
                        space, trials, histories)
