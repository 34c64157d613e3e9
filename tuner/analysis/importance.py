"""Which searched settings mattered for the search's metric: Optuna's importance evaluators over the trials.

ASHA stops most trials early, so the trials' final scores are not comparable: a trial stopped at epoch 2
would count as bad at a setting that is merely slow to start. So the trials are read twice, each time as an
Optuna study built from their records (``optuna.create_study`` + ``optuna.trial.create_trial``, with the
distributions the search sampled from):

- **at the first rung**: every trial that trained up to ASHA's first milestone has a score there, the very
  score ASHA compared; stopped and completed trials alike;
- **not stopped**: the trials ASHA let run (completed, or ended by their own patience), at their best epoch,
  which is what the leaderboard ranks by.

Each study is evaluated with fANOVA (a seeded random forest's functional ANOVA) and PED-ANOVA (Optuna 5's
default: which settings the best 10% of the trials needed), through ``optuna.importance.
get_param_importances``, which normalises each method's importances to sum to 1 over the searched settings
(where a method finds nothing, it splits the 1 evenly). Invalid architectures and failed trials take no part.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

from tuner.analysis.figures import message, save
from tuner.analysis.html import Section
from tuner.analysis.trials import SearchRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)
MIN_TRIALS = 4            # a study of fewer trials is not evaluated
METHODS = ("fANOVA", "PED-ANOVA")


def evaluator(method: str, seed: int):
    return FanovaImportanceEvaluator(seed=seed) if method == "fANOVA" else PedAnovaImportanceEvaluator()


def subsets(record: SearchRecord) -> dict[str, pd.Series]:
    """Label -> the score each trial of the subset has (indexed like ``record.trials``)."""
    trials, out = record.trials, {}
    milestones = record.settings.milestones
    if milestones:
        epoch = milestones[0]
        at = {i: record.histories[t].get(epoch, np.nan) for i, t in trials["trial_id"].items()}
        out[f"at the first rung (epoch {epoch})"] = pd.Series(at, dtype=float).dropna()
    ran = trials["outcome"].isin(["completed", "patience"])
    out["not stopped (best epoch)"] = trials.loc[ran, "best"].dropna()
    return out


def study_of(record: SearchRecord, scores: pd.Series) -> optuna.Study:
    """An Optuna study of the trials in ``scores``, each COMPLETE with its score and its settings."""
    space, trials = record.space, record.trials
    study = optuna.create_study(direction="maximize" if record.settings.mode == "max" else "minimize")
    study.add_trials([optuna.trial.create_trial(params={k: trials.at[i, k] for k in space}, distributions=space,
                                                value=float(v), user_attrs={"trial_id": trials.at[i, "trial_id"]})
                      for i, v in scores.items() if all(trials.at[i, k] is not None for k in space)])
    return study


def evaluate(study: optuna.Study, method: str, seed: int) -> dict[str, float] | None:
    """Optuna's normalised importances, or None where there are too few trials or nothing to explain."""
    if len(study.trials) < MIN_TRIALS:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # PED-ANOVA's notes on tiny quantiles
        try:
            return get_param_importances(study, evaluator=evaluator(method, seed))
        except RuntimeError:                # fANOVA: every trial scored the same, no variance to apportion
            return None


def importances(record: SearchRecord, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """A row per searched setting, a column per (method, subset); and how many trials each subset has."""
    table, counts = pd.DataFrame(index=list(record.space)), {}
    for label, scores in subsets(record).items():
        study = study_of(record, scores)
        counts[label] = len(study.trials)
        for method in METHODS:
            found = evaluate(study, method, seed) if record.space else None
            table[f"{method}, {label}"] = np.nan if found is None else pd.Series(found)
    return table.rename_axis("setting"), counts


def ranking(table: pd.DataFrame) -> list[str]:
    """The settings by importance: the first column that has values (fANOVA at the first rung, where every
    trained trial takes part), ties and gaps broken by the mean over the columns."""
    filled = [c for c in table.columns if table[c].notna().any()]
    if not filled:
        return list(table.index)
    key = table[filled[0]].fillna(0) + 1e-9 * table[filled].mean(axis=1).fillna(0)
    return list(key.sort_values(ascending=False).index)


def bar_chart(table: pd.DataFrame, order: list[str], path: Path) -> Path:
    """One panel per subset, a bar per method for each setting, the most important on top."""
    labels = list(dict.fromkeys(c.split(", ", 1)[1] for c in table.columns))
    if table.isna().all().all():
        return message(path, "too few trials to evaluate importances")
    fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 0.45 * len(order) + 1.5), squeeze=False)
    y = np.arange(len(order))[::-1]
    for ax, label in zip(axes[0], labels):
        for k, method in enumerate(METHODS):
            values = table.loc[order, f"{method}, {label}"].to_numpy(dtype=float)
            ax.barh(y + (0.2 if k == 0 else -0.2), np.nan_to_num(values), height=0.4, label=method)
        ax.set_yticks(y, order)
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (each method's sum to 1)")
        ax.set_title(label)
        ax.legend(loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def importance_section(record: SearchRecord, out: Path, seed: int) -> tuple[Section, list[str]]:
    """The section, and the settings by importance (for the marginal plots)."""
    table, counts = importances(record, seed)
    order = ranking(table)
    table.to_csv(out / "importance.csv")
    subset_text = "; ".join(f"{label}: {n} trials" for label, n in counts.items())
    s = Section("importance", "Which settings mattered",
                f"Importance of each searched setting for {record.metric}, by Optuna's fANOVA and PED-ANOVA over "
                f"studies built from the trials' MLflow records. ASHA-stopped trials are compared where every "
                f"trial has a score, at the first rung, and the trials ASHA did not stop separately, at their best "
                f"epoch ({subset_text}). Each column sums to 1 over the settings (Optuna's normalisation); a column "
                f"is left empty with fewer than {MIN_TRIALS} trials, or for fANOVA where every trial scored the "
                f"same.")
    s.attach(out / "importance.csv")
    s.figure(bar_chart(table, order, out / "importance.png"), f"importance of each setting for {record.metric}")
    s.table(table.loc[order].reset_index(), "importance per method and set of trials (each column sums to 1)")
    s.facts = {"importance_order": order, "importance_trials": counts}
    return s, order
