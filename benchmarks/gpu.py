"""How busy trials keep a GPU, side by side in one run: each workload's training-loop images/s (eager steps
against steps replayed as CUDA graphs), a whole trial's images/s (start, training, evaluation, checkpoints
and reports included) with where its time went, the aggregate images/s of real searches with 1, 2, 4 and 8
trials per GPU, and how fast the cifar_fast recipe reaches 80% test accuracy.

    python benchmarks/gpu.py --data-dir ../shared/data                      # on a machine with a GPU
    python benchmarks/gpu.py --data-dir ../shared/data --quick --device cpu # every table, tiny, on the CPU

Workloads: report 003's MNIST CNN (55k parameters, batch 64, Adam; MNIST's 54,000 training images) and the
cifar_fast recipe's ResNet-9 (width 64, batch 512, Nesterov SGD, flip + translate; the CIFAR-10 subset).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.cifar_fast import recipe  # noqa: E402
from benchmarks.records import trial_times  # noqa: E402
from tuner.cli import Help  # noqa: E402
from tuner.data import load_part, prepare_trial_data, resolve_data_dir  # noqa: E402
from tuner.evaluation import load_trial_model, score  # noqa: E402
from tuner.search import trial_reporting  # noqa: E402
from tuner.trial import TrialState, device_data, run_trial  # noqa: E402

# name -> (space whose first start point is the recipe, data subfolder, settings on top)
WORKLOADS = {"report003_mnist": ("mnist_filters_strides", "", ["batch_size=64"]),
             "resnet9": ("cifar_fast", "cifar-10-subset", [])}


def workload(name: str, args) -> tuple[dict, object, object]:
    """(trial config, its space, its data) of a workload; --quick makes it tiny."""
    space_name, sub, settings = WORKLOADS[name]
    quick = ["width=8"] if args.quick and name == "resnet9" else []
    config, space = recipe(space_name, [*settings, *quick, *args.set], args.seed)
    config["max_epochs"] = args.epochs
    data_dir = resolve_data_dir(args.data_dir)
    data = prepare_trial_data(space.dataset, data_dir / sub if sub else data_dir, space.val_fraction, args.seed,
                              limit=2048 if args.quick else None)
    return config, space, data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loop_rate(config: dict, data, device: torch.device, epochs: int) -> float:
    """Steady training-loop images/s: one warm-up epoch (cuDNN autotuning, graph capture), then the median."""
    state = TrialState(config, data, device)
    trainer = state.trainer(device_data(data, device))
    rates = []
    for i in range(epochs + 1):
        sync(device)
        start = time.perf_counter()
        trainer.epoch()
        sync(device)
        if i:
            rates.append(trainer.batches.images / (time.perf_counter() - start))
    return statistics.median(rates)


class Persist:
    """A trial's report function that keeps each checkpoint the way Ray does (a copy into storage)."""

    def __init__(self, folder: Path):
        self.folder, self.reports, self.last = folder, [], None

    def __call__(self, metrics: dict, checkpoint: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint:
            self.last = self.folder / f"checkpoint_{len(self.reports):06d}"
            shutil.copytree(checkpoint, self.last)


def whole_trial(config: dict, space, data, tmp: Path) -> dict:
    """One trial as a search runs it (its reporting, its checkpoints persisted), without Ray's driver."""
    persist = Persist(tmp / f"trial-{time.monotonic_ns()}")
    budget = dataclasses.replace(space, max_epochs=config["max_epochs"])
    start = time.perf_counter()
    run_trial(config, data, persist, reporting=trial_reporting(budget))
    wall = time.perf_counter() - start
    epochs = [e for r in persist.reports for e in r["epochs"]]
    parts = {k: sum(e.get(k, 0.0) for e in epochs) for k in ("setup_seconds", "epoch_seconds", "eval_seconds",
                                                               "checkpoint_seconds", "report_seconds")}
    images = sum(e["epoch_seconds"] * e["images_per_second"] for e in epochs)
    return {"wall": wall, "images": images, "checkpoint": persist.last, **parts}


def aggregate(name: str, config: dict, space, per_gpu: int, args, tmp: Path) -> dict:
    """A real search (Ray Tune, ASHA, Optuna, MLflow) of 2 x per_gpu trials, per_gpu at a time on one GPU
    (or sharing the CPUs), none stopped early: images trained by all trials over the search's wall time."""
    from tuner.driver import run_search
    from tuner.run import parse_args
    from tuner.timing import Timings

    space_file = tmp / f"{name}_x{per_gpu}.yaml"
    space_file.write_text(space_yaml(name, config, space, args.epochs))
    cuda = args.device != "cpu" and torch.cuda.is_available()
    cpus = max(1, (os.cpu_count() or 2) // max(per_gpu, 1)) if cuda else max((os.cpu_count() or 2) / per_gpu, 0.5)
    data_dir = resolve_data_dir(args.data_dir) / WORKLOADS[name][1]
    cli = ["--space", str(space_file), "--name", f"x{per_gpu}-{name}", "--storage-path", str(tmp / "rr"),
           "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--data-dir", str(data_dir),
           "--num-samples", str(2 * per_gpu), "--max-concurrent", str(per_gpu), "--log-top-k", "0",
           "--cpus-per-trial", str(cpus), "--gpus-per-trial", str(1 / per_gpu if cuda else 0)]
    timings = Timings()
    run_search(parse_args(cli + (["--smoke"] if args.quick else [])), timings)
    done = trial_times(tmp / "rr" / f"x{per_gpu}-{name}")
    return {"per_gpu": per_gpu, "wall": timings.seconds["search"], **done}


def space_yaml(name: str, config: dict, space, epochs: int) -> str:
    """A space of one workload's recipe whose trials all run ``epochs`` epochs (ASHA's grace is the end)."""
    import yaml

    fixed = {k: v for k, v in config.items() if k not in ("model", "dataset", "max_epochs", "seed", "lr")}
    return yaml.safe_dump({
        "description": f"gpu benchmark: {name}", "dataset": space.dataset, "model": space.model,
        "val_fraction": space.val_fraction, "fixed": fixed, "search": {"lr": {"choice": [config["lr"]]}},
        "scheduler": {"max_epochs": epochs, "grace_period": epochs}, "num_samples": 1})


def time_to_accuracy(args, tmp: Path) -> list[dict]:
    """The cifar_fast recipe as shipped, trained for each of --fast-epochs epochs (its schedule fits the
    length): wall time of the whole trial, and the test accuracy of its best epoch."""
    rows = []
    for epochs in args.fast_epochs:
        quick = ["width=8"] if args.quick else []
        config, space = recipe("cifar_fast", [*quick, *args.set, f"max_epochs={epochs}"], args.seed)
        data_dir = resolve_data_dir(args.data_dir) / "cifar-10-subset"
        data = prepare_trial_data("cifar10", data_dir, space.val_fraction, args.seed, limit=2048 if args.quick else None)
        trial = whole_trial(config, space, data, tmp)
        test = score(load_trial_model(config, trial["checkpoint"], data), load_part("cifar10", data_dir, "test"))
        rows.append({"epochs": epochs, "wall": trial["wall"], "test": test["test_accuracy"],
                     "images_per_second": trial["images"] / trial["wall"]})
    return rows


def measure(args) -> dict:
    device = torch.device("cpu" if args.device == "cpu" or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = {"device": device, "loops": {}, "trials": {}, "aggregate": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as folder:
        tmp = Path(folder)
        for name in args.workloads:
            config, space, data = workload(name, args)
            modes = {"eager": False, "CUDA graphs": True} if device.type == "cuda" else {"eager": False}
            out["loops"][name] = {mode: loop_rate({**config, "cuda_graphs": on}, data, device, args.loop_epochs)
                                  for mode, on in modes.items()}
            out["trials"][name] = whole_trial(config, space, data, tmp)
            out["aggregate"][name] = [aggregate(name, config, space, k, args, tmp) for k in args.per_gpu]
        out["fast"] = time_to_accuracy(args, tmp) if args.fast_epochs else []
    return out


def tables(m: dict, args) -> str:
    lines = [f"gpu: {m['device']} ({device_name(m['device'])}), torch {torch.__version__}, {args.epochs} epochs "
             f"per trial{' (quick: tiny data and models)' if args.quick else ''}", "",
             "| workload | training loop, eager | training loop, CUDA graphs | whole trial | whole trial / loop |",
             "|---|---:|---:|---:|---:|"]
    for name, loops in m["loops"].items():
        t = m["trials"][name]
        whole = t["images"] / t["wall"]
        best = max(loops.values())
        graphs = f"{loops['CUDA graphs']:,.0f} img/s" if "CUDA graphs" in loops else "(CPU: none)"
        lines.append(f"| {name} | {loops['eager']:,.0f} img/s | {graphs} | {whole:,.0f} img/s | {whole / best:.2f} |")
    lines += ["", "Where a whole trial's time went (seconds):", "",
              "| workload | wall | start | training | evaluation | checkpoints | reports | other |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in m["trials"].items():
        parts = [t[k] for k in ("setup_seconds", "epoch_seconds", "eval_seconds", "checkpoint_seconds",
                                "report_seconds")]
        lines.append(f"| {name} | {t['wall']:.2f} | " + " | ".join(f"{p:.2f}" for p in parts)
                     + f" | {t['wall'] - sum(parts):.2f} |")
    lines += ["", "Searches (Ray Tune + MLflow), 2 waves of k trials at once, k per GPU (images/s of all trials "
                  "over the search's wall time):", "",
              "| workload | " + " | ".join(f"k = {k}" for k in args.per_gpu) + " |",
              "|---|" + "---:|" * len(args.per_gpu)]
    for name, rows in m["aggregate"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['images'] / r['wall']:,.0f}" for r in rows) + " |")
    if m["fast"]:
        lines += ["", "cifar_fast on the CIFAR-10 subset, whole trials by length:", "",
                  "| epochs | wall s | images/s | test accuracy |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['epochs']} | {r['wall']:.2f} | {r['images_per_second']:,.0f} | {r['test']:.4f} |"
                  for r in m["fast"]]
        reached = [r for r in m["fast"] if r["test"] >= args.target]
        lines += ["", f"time to {args.target:.0%} test accuracy: "
                  + (f"{min(r['wall'] for r in reached):.2f} s" if reached else "not reached")]
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Help)
    p.add_argument("--data-dir", help="folder with MNIST/ and cifar-10-subset/ (default: $TUNER_DATA_DIR, else ./data)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (whole trials and searches)")
    p.add_argument("--loop-epochs", type=int, default=2, help="timed training-loop epochs, after a warm-up one")
    p.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU in the searches")
    p.add_argument("--fast-epochs", type=int, nargs="*", default=[10, 14, 18],
                   help="cifar_fast trial lengths to time (none: skip)")
    p.add_argument("--target", type=float, default=0.80, help="test accuracy cifar_fast should reach")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change every workload's recipe")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) or cpu")
    p.add_argument("--quick", action="store_true", help="2,048 images, ResNet-9 at width 8, searches as --smoke")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    m = measure(args)
    print(tables(m, args))
    return m


if __name__ == "__main__":
    main()
