"""A report's figures beside a search's own.

A space's ``reference:`` is a list of entries, each the settings a report used and the figure it reached,
e.g. ``{kernel_size: 5, stride: 1, padding: same, test_accuracy: 0.9814, source: "report 003, Table 3"}``.
An entry's settings must be ones the space fixes or searches; an entry without settings is the report's
figure for the space as a whole. After a search, each leaderboard row whose settings match an entry shows
the entry's figure (``report_test_accuracy``, ...), and the summary sets the best reported figure against
the search's best.
"""

from __future__ import annotations

import math

FIGURES = ("test_accuracy", "val_accuracy", "train_accuracy", "test_loss", "val_loss", "train_loss")
NOTES = ("source", "note")


def settings_of(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in FIGURES and k not in NOTES}


def _same(a, b) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) if numbers else a == b


def matching(config: dict, reference: list[dict]) -> dict | None:
    """The first entry whose settings all equal the trial's (entries without settings match no trial)."""
    for entry in reference:
        wanted = settings_of(entry)
        if wanted and all(k in config and _same(config[k], v) for k, v in wanted.items()):
            return entry
    return None


def figure_columns(reference: list[dict]) -> list[str]:
    return [f for f in FIGURES if any(f in e for e in reference)]


def reference_figures(config: dict, reference: list[dict]) -> dict:
    """``report_<figure>`` of the matching entry for one trial (NaN where none matches)."""
    entry = matching(config, reference) or {}
    return {f"report_{f}": float(entry.get(f, math.nan)) for f in figure_columns(reference)}


def best_reference(reference: list[dict]) -> tuple[str, dict] | None:
    """(figure, entry) of the best reported figure: test accuracy if the report gave one, else its first kind."""
    columns = figure_columns(reference)
    if not columns:
        return None
    figure = columns[0]
    sign = -1.0 if figure.endswith("loss") else 1.0
    return figure, max((e for e in reference if figure in e), key=lambda e: sign * float(e[figure]))


def describe(entry: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in settings_of(entry).items()) or "as the report trained it"
    return settings + (f"; {entry['source']}" if entry.get("source") else "")


def comparison(reference: list[dict], ours: dict[str, float], matched: int) -> list[str]:
    """Lines for the summary: the best reported figure, and the search's best of the same kind."""
    best = best_reference(reference)
    if best is None:
        return []
    figure, entry = best
    lines = [f"Report's best: {figure} {float(entry[figure]):.4f} ({describe(entry)}); "
             f"{matched} trial(s) ran a reported setting (report_* columns)"]
    if figure in ours and ours[figure] is not None and not math.isnan(ours[figure]):
        diff = ours[figure] - float(entry[figure])
        better = diff < 0 if figure.endswith("loss") else diff > 0
        lines.append(f"This search's best: {figure} {ours[figure]:.4f}, {diff:+.4f} "
                     f"({'beats' if better else 'does not beat'} the report)")
    return lines
