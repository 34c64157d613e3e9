"""What a finished search left in its results folder, summed for the benchmarks: each trial's reports
(``trial_*/result.json``) and the epochs they carry (a report carries every epoch since the previous one)."""

from __future__ import annotations

import json
from pathlib import Path


def trial_reports(folder: Path) -> dict[str, list[dict]]:
    """Trial folder name -> its reports, in order."""
    out = {}
    for path in sorted(Path(folder).glob("trial_*/result.json")):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def trial_times(folder: Path) -> dict[str, float]:
    """Sums over every trial: training steps, evaluation, images trained, and the rest of each trial's time
    (model build, data to device, checkpoints, reports and waiting for the driver)."""
    train = evaluate = total = images = 0.0
    epochs = 0
    for reports in trial_reports(folder).values():
        for report in reports:
            total += report.get("time_this_iter_s", 0.0)
            for epoch in report.get("epochs") or []:
                epochs += 1
                train += epoch["epoch_seconds"]
                evaluate += epoch.get("eval_seconds", 0.0)
                images += epoch["epoch_seconds"] * epoch["images_per_second"]
    return {"train": train, "eval": evaluate, "trial_other": total - train - evaluate, "trials_total": total,
            "trial_epochs": epochs, "images": images}
