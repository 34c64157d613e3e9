"""The fast-training recipe (space cifar_fast) against the reports' own CIFAR-10 networks, each trained the
way its report trained it (its space's first ``start`` point for its space's max_epochs), on the same images
and device, one after another: the best epoch's validation and test accuracy, and the wall time.

    python benchmarks/cifar_fast.py --data-dir ../shared/data/cifar-10-subset
    python benchmarks/cifar_fast.py --data-dir ... --set width=32 --set max_epochs=12   # CPU-sized recipe
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.cli import Help  # noqa: E402
from tuner.data import load_part, prepare_trial_data, resolve_data_dir  # noqa: E402
from tuner.evaluation import load_trial_model, score  # noqa: E402
from tuner.spaces import load_space, parse_override  # noqa: E402
from tuner.trial import pick_device, run_trial  # noqa: E402

REPORT_SPACES = ["cifar_filters_strides", "cifar_lenet", "cifar_model1", "cifar_fc_l2", "cifar_lrn"]


class BestEpoch:
    """Keeps the best validation epoch's weights, as the search does: each checkpoint's ``best_model.pt``."""

    def __init__(self, folder: Path):
        self.folder, self.best, self.epochs = folder, -1.0, 0

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.epochs = metrics.get("epoch", self.epochs)
        self.best = max([self.best, *(e["val_accuracy"] for e in metrics.get("epochs", []))])
        if checkpoint_dir:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "best_model.pt").write_bytes(Path(checkpoint_dir, "best_model.pt").read_bytes())


def recipe(space_name: str, overrides: list[str], seed: int) -> tuple[dict, object]:
    space = load_space(space_name)
    config = {**space.fixed, **(space.start[0] if space.start else {}), "model": space.model,
              "dataset": space.dataset, "max_epochs": space.max_epochs, "seed": seed}
    for text in overrides:
        key, _, value = text.partition("=")
        config.update([parse_override(text, space)] if key != "max_epochs" else [("max_epochs", int(value))])
    return config, space


def train_one(space_name: str, overrides: list[str], args, test_set, folder: Path) -> dict:
    config, space = recipe(space_name, overrides, args.seed)
    data = prepare_trial_data(space.dataset, resolve_data_dir(args.data_dir), space.val_fraction, args.seed)
    keeper = BestEpoch(folder / space_name)
    start = time.perf_counter()
    run_trial(config, data, keeper)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    test = score(load_trial_model(config, keeper.folder, data), test_set)
    return {"space": space_name, "model": config["model"], "epochs": keeper.epochs, "val": keeper.best,
            "test": test["test_accuracy"], "seconds": seconds}


def table(rows: list[dict], device: str, fast: str) -> str:
    fast_row = next(r for r in rows if r["space"] == "cifar_fast")
    reports = [r for r in rows if r["space"] != "cifar_fast"]
    best = max(reports, key=lambda r: r["test"]) if reports else None
    lines = [f"cifar_fast: each network trained as its report (or the recipe) trains it, on {device}; "
             f"cifar_fast settings: {fast or 'as shipped'}", "",
             "| space | model | epochs | best val acc | test acc | wall s | time vs cifar_fast |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['space']} | {r['model']} | {r['epochs']} | {r['val']:.4f} | {r['test']:.4f} | "
                     f"{r['seconds']:.0f} | {r['seconds'] / fast_row['seconds']:.2f}x |")
    if best:
        lines += ["", f"cifar_fast vs the best report network ({best['model']}): test accuracy "
                      f"{fast_row['test'] - best['test']:+.4f}, time {fast_row['seconds'] / best['seconds']:.2f}x"]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Help)
    p.add_argument("--data-dir", help="the folder holding cifar-10-batches-py (default: $TUNER_DATA_DIR)")
    p.add_argument("--reports", nargs="*", default=REPORT_SPACES, help="report spaces to train")
    p.add_argument("--set", dest="fast", action="append", default=[], metavar="KEY=VALUE",
                   help="change the cifar_fast recipe (max_epochs too)")
    p.add_argument("--report-set", action="append", default=[], metavar="KEY=VALUE",
                   help="change every report recipe (e.g. max_epochs=2 for a quick check)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    test_set = load_part("cifar10", resolve_data_dir(args.data_dir), "test")
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="cifar-fast-") as tmp:
        for name in [*args.reports, "cifar_fast"]:
            extra = args.fast if name == "cifar_fast" else args.report_set
            rows.append(train_one(name, extra, args, test_set, Path(tmp)))
            print(f"  {name}: test {rows[-1]['test']:.4f} in {rows[-1]['seconds']:.0f} s", flush=True)
    print(table(rows, str(pick_device()), " ".join(args.fast)))
    return rows


if __name__ == "__main__":
    main()
