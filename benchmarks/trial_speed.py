"""Training images per second: tuner's epoch loop against a plain torchvision DataLoader with per-item
transforms (the way the course reports trained), with the same model, data, batch, optimizer and device,
measured side by side in one run.

    python benchmarks/trial_speed.py --dataset mnist --model report003_mnist
    python benchmarks/trial_speed.py --dataset cifar10 --data-dir ../shared/data/cifar-10-subset \
        --model report003_cifar --augment crop_flip
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from tuner.cli import Help  # noqa: E402
from tuner.data import TrialData, channel_stats, load_part, resolve_data_dir  # noqa: E402
from tuner.train import TrainConfig, Trainer, build_optimizer, build_schedule, evaluate  # noqa: E402
from tuner.trial import device_data, pick_device  # noqa: E402


class PerItemDataset(Dataset):
    """What torchvision's MNIST/CIFAR datasets do: one PIL image per item, then the transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        return self.transform(pil), int(self.labels[i])


def per_item_transform(augment: str, mean, std, size: int) -> T.Compose:
    steps = []
    if augment in ("crop", "crop_flip"):
        steps.append(T.RandomCrop(size, padding=4))
    if augment in ("flip", "crop_flip"):
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def dataloader_epoch(model, opt, images, labels, cfg: TrainConfig, device, workers: int) -> float:
    """The reports' loop: a DataLoader over per-item transforms, a host sync (loss.item()) every step."""
    mean, std = channel_stats(images)
    data = PerItemDataset(images, labels, per_item_transform(cfg.augment, mean, std, images.shape[-1]))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model.train()
    start, running = time.perf_counter(), 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        running += loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(labels) / (time.perf_counter() - start)


def tuner_trainer(model, opt, data, cfg: TrainConfig, gen) -> Trainer:
    return Trainer(model, opt, build_schedule(opt, cfg, -(-len(data.y_train) // cfg.batch_size)), data, cfg, gen)


def tuner_epoch(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.epoch()                      # reads its loss back once, at the end
    if trainer.data.x_train.is_cuda:
        torch.cuda.synchronize()
    return trainer.batches.images / (time.perf_counter() - start)


def fresh(args, shape, classes, device, cfg):
    torch.manual_seed(0)
    model = build_model(args.model, {}, shape, classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, cfg)


def compiled_rates(args, shape, classes, device, cfg, data, gen) -> dict:
    """tuner's loop with torch.compile: the first epoch (compiling) and the steady ones."""
    model, opt = fresh(args, shape, classes, device, cfg)
    trainer = tuner_trainer(torch.compile(model), opt, data, dataclasses.replace(cfg, compile=True), gen)
    first = tuner_epoch(trainer)
    steady = [tuner_epoch(trainer) for _ in range(args.epochs)]
    return {"first": first, "steady": statistics.median(steady)}


def measure(args) -> dict:
    device = torch.device(args.device) if args.device != "auto" else pick_device()
    torch.set_num_threads(args.threads)
    part = load_part(args.dataset, resolve_data_dir(args.data_dir), "train")
    images, labels = part.images[:args.images], part.labels[:args.images]
    cfg = TrainConfig(batch_size=args.batch_size, augment=args.augment, lr=1e-3)
    shape, classes = images.shape[1:], len(part.classes)
    rates = {"DataLoader, per-item transforms": [], "tuner, device-resident tensors": []}
    split = TrialData(args.dataset, images, labels, np.arange(len(labels)), np.arange(2), part.classes,
                      *channel_stats(images))     # every image trains; the trial's own loading puts them on device
    data, gen = device_data(split, device), torch.Generator(device=device).manual_seed(0)
    trainer = tuner_trainer(*fresh(args, shape, classes, device, cfg), data, cfg, gen)
    for epoch in range(args.epochs + 1):        # epoch 0 warms both up (allocator, cuDNN autotuning, capture)
        model, opt = fresh(args, shape, classes, device, cfg)
        rate = dataloader_epoch(model, opt, images, labels, cfg, device, args.workers)
        ours = tuner_epoch(trainer)
        if epoch:
            rates["DataLoader, per-item transforms"].append(rate)
            rates["tuner, device-resident tensors"].append(ours)
    out = {"device": str(device), "rates": {k: statistics.median(v) for k, v in rates.items()}}
    if args.compile:
        out["compiled"] = compiled_rates(args, shape, classes, device, cfg, data, gen)
    if args.eval_batches:
        out["eval"] = eval_rates(trainer.model, data, args)
    return out


def eval_rates(model, data, args) -> dict[int, float]:
    """Evaluation images/s of the trained model at each eval batch size, in alternating rounds (one untimed
    round first), so that a drift in the machine's speed touches every size alike: median per size."""
    times: dict[int, list[float]] = {b: [] for b in args.eval_batches}
    for rnd in range(args.epochs + 1):
        for b in args.eval_batches:
            start = time.perf_counter()
            evaluate(model, data.x_train, data.y_train, data.mean, data.std, b)   # reads its result back
            if rnd:
                times[b].append(time.perf_counter() - start)
    return {b: len(data.y_train) / statistics.median(t) for b, t in times.items()}


def table(result: dict, args) -> str:
    base = result["rates"]["DataLoader, per-item transforms"]
    lines = [f"trial_speed: {args.model} on {args.images} {args.dataset} images, batch {args.batch_size}, "
             f"augment {args.augment}, {result['device']} ({args.threads} threads), median of {args.epochs} epochs",
             "", "| loop | images/s | ratio |", "|---|---:|---:|"]
    for name, rate in result["rates"].items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    if "compiled" in result:
        c, plain = result["compiled"], result["rates"]["tuner, device-resident tensors"]
        lines.append(f"| tuner + torch.compile (steady epochs) | {c['steady']:,.0f} | {c['steady'] / base:.2f}x |")
        n = args.images
        compile_s = n / c["first"] - n / c["steady"]              # the first epoch's extra time
        gain_s = n / plain - n / c["steady"]                       # saved per later epoch (may be < 0)
        verdict = (f"pays off after {compile_s / gain_s:.0f} epochs of {n} images" if gain_s > 0
                   else "never pays off here: compiled epochs are not faster")
        lines += ["", f"torch.compile: {compile_s:.1f} s to compile; {verdict}"]
    if "eval" in result:
        rates = result["eval"]
        first = rates[args.eval_batches[0]]
        lines += ["", f"evaluation of the trained model on the same {args.images} images, median of {args.epochs} rounds:",
                  "", "| eval batch | images/s | ratio |", "|---:|---:|---:|"]
        lines += [f"| {b:,} | {r:,.0f} | {r / first:.2f}x |" for b, r in rates.items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Help)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", help="dataset folder (default: $TUNER_DATA_DIR, else ./data)")
    p.add_argument("--model", default="report003_mnist")
    p.add_argument("--images", type=int, default=12000, help="training images per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", default="none", help="none, flip, crop, crop_flip (both loops)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per loop, after one warm-up epoch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--compile", action="store_true", help="also time tuner's loop under torch.compile")
    p.add_argument("--eval-batches", type=int, nargs="*", default=[],
                   help="also time evaluation at these eval batch sizes (the first is the ratios' base)")
    args = p.parse_args(argv)
    result = measure(args)
    print(table(result, args))
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    return result


if __name__ == "__main__":
    main()
