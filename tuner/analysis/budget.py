"""How the search spent its budget: trial-epochs per stretch between ASHA's rungs, the trials stopped at
each rung, what FIFO scheduling would have cost with the same trials, where each trial's time went, and the
trials that failed or could not be built. From the trials' MLflow records only."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from tuner.analysis.figures import message, save
from tuner.analysis.html import Section
from tuner.analysis.trials import SearchRecord

OUTCOME_COLORS = {"completed": "tab:blue", "stopped": "tab:orange", "patience": "tab:green", "invalid": "tab:red",
                  "diverged": "tab:purple", "failed": "tab:red", "lost": "tab:gray", "unfinished": "tab:gray"}
SLOWEST_SHOWN = 20       # trials in the HTML's time table (the CSV has them all)


def stretches(record: SearchRecord) -> list[tuple[int, int, str]]:
    """(first epoch, last epoch, what ends it): from the start to rung 0, rung to rung, the last rung to max_t."""
    s = record.settings
    ends = [*s.milestones, s.max_t]
    starts = [0, *ends[:-1]]
    names = [f"rung {k}" for k in range(len(s.milestones))] + ["max_t"]
    return [(a + 1, b, name) for a, b, name in zip(starts, ends, names)]


def rung_table(record: SearchRecord) -> pd.DataFrame:
    """A row per stretch: trials that trained in it, the trial-epochs spent, and how trials ended in it."""
    t, stopped_by = record.trials, f"stopped by {record.settings.stopper}"
    epochs, outcome = t["epochs"], t["outcome"]
    rows = []
    for first, last, name in stretches(record):
        ended_in = (epochs >= first) & (epochs <= last)
        rows.append({"epochs": f"{first}-{last}" if first < last else str(first), "ends at": name,
                     "trials training": int((epochs >= first).sum()),
                     "trial-epochs": int((epochs.clip(upper=last) - (first - 1)).clip(lower=0).sum()),
                     stopped_by: int((ended_in & (outcome == "stopped")).sum()),
                     "completed": int((ended_in & (outcome == "completed")).sum()),
                     "ended otherwise": int((ended_in & ~outcome.isin(["stopped", "completed"])).sum())})
    return pd.DataFrame(rows)


def seconds_per_epoch(t: pd.DataFrame) -> pd.Series:
    """Each trial's training and validation seconds per epoch; the search's median where it has none."""
    per = (t["train_seconds"] + t["eval_seconds"]) / t["epochs"].where(t["epochs"] > 0)
    return per.fillna(per.median() if per.notna().any() else 0.0)


def fifo_table(record: SearchRecord) -> pd.DataFrame:
    """Trial-epochs and (estimated) seconds: what ASHA (or the pruner) spent, against FIFO with the same trials."""
    t, max_t, by = record.trials, record.settings.max_t, record.settings.stopper
    per = seconds_per_epoch(t)
    trained = t["epochs"] > 0
    same = t["epochs"].where(t["outcome"] != "stopped", max_t)     # stopped trials trained on to max_t
    every = pd.Series(np.where(trained, max_t, 0), index=t.index)
    rows = [(f"{by}, as run", t["epochs"]),
            (f"FIFO, same trials: each trial {by} stopped trained on to max_t", same),
            ("FIFO, every trained trial to max_t", every)]
    spent = int(t["epochs"].sum())
    return pd.DataFrame([{"schedule": name, "trial-epochs": int(e.sum()),
                          "times as run": e.sum() / spent if spent else np.nan,
                          "training + validation seconds (estimated)": float((e * per).sum())} for name, e in rows])


def timeline(record: SearchRecord, path: Path) -> Path:
    """Each trial as a bar from its start to its end, coloured by how it ended: concurrency and stops."""
    t = record.trials.dropna(subset=["wall_seconds"])
    if t.empty:
        return message(path, "no trial has ended")
    fig, ax = plt.subplots(figsize=(10, 0.12 * len(t) + 1.5))
    y = np.arange(len(t))[::-1]
    colors = [OUTCOME_COLORS.get(o, "tab:gray") for o in t["outcome"]]
    ax.barh(y, t["wall_seconds"], left=t["start_seconds"], color=colors, height=0.8)
    handles = [Patch(color=OUTCOME_COLORS.get(name, "tab:gray"), label=name) for name in dict.fromkeys(t["outcome"])]
    ax.set_yticks([])
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel(f"{len(t)} trials, by start")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title("when each trial ran")
    return save(fig, path)


def time_table(record: SearchRecord) -> pd.DataFrame:
    cols = ["trial_id", "outcome", "epochs", "wall_seconds", "device_seconds", "train_seconds", "eval_seconds",
            "overhead_seconds"]
    return record.trials[cols].sort_values("wall_seconds", ascending=False, na_position="last")


def totals(record: SearchRecord) -> dict:
    t, parent = record.trials, record.parent.info
    search_wall = (parent.end_time - parent.start_time) / 1000.0 if parent.end_time else np.nan
    return {"search wall seconds": search_wall, "trials' wall seconds": float(t["wall_seconds"].sum()),
            f"trials' {record.settings.device_unit}": float(t["device_seconds"].sum()),
            "training seconds": float(t["train_seconds"].sum()), "validation seconds": float(t["eval_seconds"].sum()),
            "trial overhead seconds (setup, checkpoints, reports)": float(t["overhead_seconds"].sum())}


def budget_section(record: SearchRecord, out: Path) -> Section:
    s = record.settings
    rungs, fifo, times = rung_table(record), fifo_table(record), time_table(record)
    rungs.to_csv(out / "budget_rungs.csv", index=False)
    fifo.to_csv(out / "budget_fifo.csv", index=False)
    times.to_csv(out / "trial_times.csv", index=False)
    decides = (f"ASHA (grace period {s.grace_period}, reduction factor {s.reduction_factor}, max_t {s.max_t}) "
               f"decides at epochs {', '.join(map(str, s.milestones)) or '(none: grace period = max_t)'}. ")
    if s.pruner != "asha":
        decides = (f"{s.stopper} decides at every epoch from the grace period ({s.grace_period}) to max_t "
                   f"({s.max_t}); the stretches below end at the epochs ASHA would decide at, for comparison. ")
    section = Section("budget", "What the search spent", decides +
                      f"Trial-epochs are epochs trained, summed over trials. Device-seconds are the seconds each trial "
                      f"measured itself training, evaluating and around them (setup, checkpoints, reports) times "
                      f"its share of devices ({s.device_share:g} per trial: {s.device_unit}); its wall time, start "
                      f"to end, also holds any time the search stood interrupted.")
    for name in ("budget_rungs.csv", "budget_fifo.csv", "trial_times.csv"):
        section.attach(out / name)
    section.table(rungs, "per stretch between ASHA's rungs (under a pruner: where ASHA would decide): trials that "
                         "trained in it, epochs spent, and how the trials that ended in it ended")
    section.table(fifo, f"{s.stopper} against FIFO with the same trials; seconds estimated from each trial's own "
                        f"seconds per epoch")
    section.table(pd.DataFrame({"": list(totals(record)), "value": list(totals(record).values())}), "time, in total")
    section.figure(timeline(record, out / "timeline.png"), "trials over time, coloured by how they ended")
    section.table(times.head(SLOWEST_SHOWN), f"the {min(SLOWEST_SHOWN, len(times))} longest trials (all in "
                                             f"trial_times.csv)")
    section.items.append(("table", failures(record), "trials that failed, could not be built, or were lost"))
    section.facts = {"trial_epochs": int(record.trials["epochs"].sum()),
                     "fifo_trial_epochs": int(fifo["trial-epochs"].iloc[1]),
                     "stopped_per_rung": dict(zip(rungs["ends at"], rungs[f"stopped by {s.stopper}"]))}
    return section


def failures(record: SearchRecord) -> pd.DataFrame:
    t = record.trials
    bad = t[t["outcome"].isin(["invalid", "diverged", "failed", "lost", "unfinished"])]
    return bad[["trial_id", "outcome", "epochs", "end_reason"]].reset_index(drop=True)
