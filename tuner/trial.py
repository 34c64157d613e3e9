"""One trial: the Ray Tune function trainable around the training loop.

``train_trial`` is what Ray runs. It hands ``run_trial`` Ray's report function and the checkpoint to
start from; ``run_trial`` itself is plain Python, so it can also be driven directly.
Every epoch reports the metrics and a checkpoint (model, optimizer, schedule, epoch, early-stopping
state, RNG state), so a trial restarted from it continues where it was, bit for bit.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models import ArchitectureError, build_model
from tuner import transfer
from tuner.data import TrialData
from tuner.train import (DeviceData, EarlyStopping, TrainConfig, build_optimizer, build_schedule, evaluate,
                         train_epoch)

# Each worker process keeps the dataset on its device once, for every trial it runs (reuse_actors=True).
_DEVICE_DATA: dict[tuple, DeviceData] = {}

Report = Callable[[dict, str | None], None]   # (metrics, checkpoint dir or None)


def worst_value(metric: str, mode: str) -> float:
    if metric.endswith("accuracy"):
        return 0.0 if mode == "max" else 1.0
    return float("-inf") if mode == "max" else float("inf")


def pick_device() -> torch.device:
    # Ray hides GPUs a trial was not given (CUDA_VISIBLE_DEVICES), so "visible" means "ours".
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True    # fixed batch shapes: let cuDNN pick its fastest kernels once
        return torch.device("cuda")
    return torch.device("cpu")


def device_data(data: TrialData, device: torch.device) -> DeviceData:
    key = (data.key, str(device))
    if key not in _DEVICE_DATA:
        # Fancy indexing copies out of the read-only object-store array, once per worker.
        tensor = lambda a: torch.from_numpy(a).to(device)                                   # noqa: E731
        stats = lambda v: torch.tensor(v, device=device, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        _DEVICE_DATA.clear()   # one dataset per worker at a time
        _DEVICE_DATA[key] = DeviceData(
            tensor(data.images[data.train_idx]), tensor(data.labels[data.train_idx]),
            tensor(data.images[data.val_idx]), tensor(data.labels[data.val_idx]), stats(data.mean), stats(data.std))
    return _DEVICE_DATA[key]


class TrialState:
    """Everything a checkpoint holds."""

    def __init__(self, config: dict, data: TrialData, device: torch.device, pretrained: dict | None = None):
        self.cfg = TrainConfig.from_config(config)
        torch.manual_seed(self.cfg.seed)          # same seed, same init: trials differ by their config only
        self.model = build_model(config["model"], config, data.input_shape, data.num_classes).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # transfer: pretrained weights, layers that never train, the head's learning rate, the frozen backbone
        self.transfer = transfer.prepare(self.model, config, pretrained)
        steps = -(-len(data.train_idx) // self.cfg.batch_size)
        groups = transfer.optimizer_groups(self.model, self.cfg, self.transfer)
        self.optimizer = build_optimizer(self.model, self.cfg, groups)
        self.schedule = build_schedule(self.optimizer, self.cfg, steps)
        # The average is a copy made before the freezing hook is attached: it is only ever evaluated.
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True) \
            if self.cfg.ema > 0 else None
        self.transfer.attach(self.model, self.schedule)
        self.stopper = EarlyStopping(self.cfg.patience, self.cfg.early_stop_on, self.cfg.min_delta)
        self.gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
        self.epoch = 0
        # Compiled for training steps only: evaluation and checkpoints use the plain module (same weights).
        self.step_model = torch.compile(self.model) if self.cfg.compile else self.model

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated, checkpointed as model.pt and scored on the test set: the average if kept."""
        return self.ema.module if self.ema is not None else self.model

    def save(self, folder: str) -> None:
        torch.save(self.eval_model.state_dict(), os.path.join(folder, "model.pt"))
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "stopper": self.stopper.state_dict(), "rng": self.gen.get_state(), "epoch": self.epoch}
        if self.ema is not None:   # model.pt holds the average; training goes on from the raw weights
            state.update(train_model=self.model.state_dict(), ema_steps=self.ema.n_averaged)
        torch.save(state, os.path.join(folder, "state.pt"))

    def load(self, folder: str | Path) -> None:
        device = next(self.model.parameters()).device
        saved = torch.load(Path(folder, "model.pt"), map_location=device, weights_only=True)
        state = torch.load(Path(folder, "state.pt"), map_location="cpu", weights_only=True)  # RNG state: CPU
        self.eval_model.load_state_dict(saved)
        if self.ema is not None:
            self.model.load_state_dict(state["train_model"])
            self.ema.n_averaged.copy_(state["ema_steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stopper.load_state_dict(state["stopper"])
        self.gen.set_state(state["rng"])
        self.epoch = state["epoch"]


def _fault_hook(epoch: int) -> None:
    """Test-only: TUNER_FAULT_EPOCH=N crashes the first trial that reaches epoch N, once per marker file
    TUNER_FAULT_MARKER (so the retry runs on)."""
    at, marker = os.environ.get("TUNER_FAULT_EPOCH"), os.environ.get("TUNER_FAULT_MARKER")
    if at and marker and epoch == int(at):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        raise RuntimeError(f"injected fault at epoch {epoch} (TUNER_FAULT_EPOCH)")


def run_trial(config: dict, data: TrialData, report: Report, start: str | Path | None = None,
              pretrained: dict | None = None) -> None:
    """Train for ``config['max_epochs']`` epochs (or until early stopping), reporting after each; ``pretrained``
    is a state dict to start from (see ``tuner.transfer``)."""
    metric, mode = config.get("metric", "val_accuracy"), config.get("mode", "max")
    device = pick_device()
    try:
        state = TrialState(config, data, device, pretrained)
    except ArchitectureError as exc:
        # Rejected before training: the worst score teaches the searcher to avoid it; the search goes on.
        report({metric: worst_value(metric, mode), "epoch": 0, "end_reason": f"invalid architecture: {exc}"}, None)
        return
    if start is not None:
        state.load(start)
    dd = device_data(data, device)
    cfg = state.cfg
    while state.epoch < cfg.max_epochs:
        state.epoch += 1
        _fault_hook(state.epoch)
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(state.step_model, state.optimizer, state.schedule, dd, cfg, state.gen,
                                            state.ema)
        seconds = time.perf_counter() - t0
        val_loss, val_acc = evaluate(state.eval_model, dd.x_val, dd.y_val, dd.mean, dd.std, cfg.eval_batch_size)
        eval_seconds = time.perf_counter() - t0 - seconds
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {state.epoch}")
        metrics = {"epoch": state.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_acc,
                   "lr": state.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                   "eval_seconds": eval_seconds, "images_per_second": len(dd.y_train) / seconds}
        stop = state.stopper.update(state.epoch, metrics)
        if stop:
            metrics["end_reason"] = f"early-stopped by patience {cfg.patience} at epoch {state.epoch}"
        elif state.epoch == cfg.max_epochs:
            metrics["end_reason"] = "completed"
        with tempfile.TemporaryDirectory(prefix="tuner-ckpt-") as folder:
            state.save(folder)
            report(metrics, folder)
        if stop:
            return


def train_trial(config: dict, data: TrialData, pretrained: dict | None = None) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters`` to receive ``data`` and the
    search's ``pretrained`` weights)."""
    import ray
    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)   # a line per checkpoint otherwise
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    node_id = ray.get_runtime_context().get_node_id()   # which machine ran it, for the search's records

    def report(metrics: dict, folder: str | None) -> None:
        tune.report({**metrics, "node_id": node_id},
                    checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(config, data, report, pretrained=pretrained)
    else:
        with checkpoint.as_directory() as folder:
            run_trial(config, data, report, start=folder, pretrained=pretrained)
