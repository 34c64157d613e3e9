"""The search's own part of the report: what it was, which settings mattered, every trial at once, what it
spent, and what its scores cost in size and speed. Read from MLflow only (``tuner.analysis.trials``)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from tuner.analysis.budget import budget_section
from tuner.analysis.coordinates import coordinates_sections
from tuner.analysis.html import Section
from tuner.analysis.importance import importance_section
from tuner.analysis.progress import say
from tuner.analysis.trials import SearchRecord
from tuner.analysis.tradeoffs import tradeoffs_section


def describe_objectives(record: SearchRecord) -> str:
    s = record.settings
    if not s.objectives:
        return f"{s.metric} ({s.mode})"
    return " against ".join(f"{m} ({mode})" for m, mode in s.objectives) + f"; {s.stopper} stops on the first"


def search_overview(record: SearchRecord, out: Path) -> Section:
    t, tags = record.trials, record.parent.data.tags
    record.trials.to_csv(out / "trials.csv", index=False)
    counts = t["outcome"].value_counts() if len(t) else pd.Series(dtype=int)
    rows = {"search": record.name, "space": tags.get("tuner.space", ""), "trials": len(t),
            **{f"trials {k}": int(v) for k, v in counts.items()},
            "objective": describe_objectives(record), "searcher": record.settings.searcher,
            "searched settings": ", ".join(record.space), "best trial": tags.get("tuner.best_trial_id", "")}
    if tags.get("tuner.front"):
        rows["Pareto front (the search's)"] = tags["tuner.front"].replace(",", ", ")
    s = Section("search", f"The search {record.name}",
                f"How the search ran and how its trials ended (completed; stopped by {record.settings.stopper}; "
                "early-stopped by their own patience; invalid: the network could not be built; failed), from its "
                "MLflow runs.")
    s.attach(out / "trials.csv")
    s.table(pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]}))
    s.facts = {"trials": len(t), "outcomes": {k: int(v) for k, v in counts.items()}}
    return s


def search_sections(record: SearchRecord, out: Path, seed: int, timings: dict[str, float]) -> list[Section]:
    """Every section of the search's part, each timed into ``timings``."""
    sections = [search_overview(record, out)]
    start = time.perf_counter()
    say("[search] importance")
    importance, order = importance_section(record, out, seed)
    timings["search: importance"] = round(time.perf_counter() - start, 2)
    sections.append(importance)
    plan = [("parallel coordinates and marginals", lambda: coordinates_sections(record, order, out, seed)),
            ("budget", lambda: budget_section(record, out)),
            ("size and speed", lambda: tradeoffs_section(record, out))]
    for name, build in plan:
        say(f"[search] {name}")
        start = time.perf_counter()
        built = build()
        sections += built if isinstance(built, list) else [built]
        timings[f"search: {name}"] = round(time.perf_counter() - start, 2)
    return sections
