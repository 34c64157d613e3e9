"""One trial: the Ray Tune function trainable around the training loop.

``train_trial`` is what Ray runs. It hands ``run_trial`` Ray's report function and the checkpoint to
start from; ``run_trial`` itself is plain Python, so it can also be driven directly.

A Ray function trainable stops at every report until the driver has handled it, so a trial reports only
when the driver needs to hear from it (``Reporting``): at the epochs where ASHA decides, at its end, and
otherwise at most every few seconds; each report carries every epoch since the last. Each report comes
with a checkpoint (model, optimizer, schedule, epoch, early-stopping state, RNG states, and the weights of
the best epoch so far), so a trial restarted from it continues where it was, bit for bit. From the first
report on, every result also carries what the network costs (``tuner.costs``: parameters, latency).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from models import ArchitectureError, build_model
from tuner import transfer
from tuner.batches import DeviceData
from tuner.costs import model_costs, unknown_costs
from tuner.data import TrialData
from tuner.train import (EarlyStopping, TrainConfig, Trainer, WeightAverage, build_optimizer, build_schedule,
                         eval_batch, evaluate)

# Each worker process keeps the dataset on its device once, for every trial it runs (reuse_actors=True).
_DEVICE_DATA: dict[tuple, DeviceData] = {}

Report = Callable[[dict, str | None], None]   # (metrics, checkpoint dir or None)
MODEL_FILE, BEST_FILE, STATE_FILE = "model.pt", "best_model.pt", "state.pt"


@dataclass(frozen=True)
class Reporting:
    """When a trial reports: after every epoch in ``milestones`` (where the scheduler decides), after its
    last epoch, and after any epoch that ends ``seconds`` or more after the previous report. The defaults
    report every epoch."""

    milestones: tuple[int, ...] = ()
    seconds: float = 0.0

    def due(self, epoch: int, since_last: float) -> bool:
        return epoch in self.milestones or since_last >= self.seconds


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


class Best:
    """The best epoch so far by the search's metric, and a copy of its evaluated weights (on the device)."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.epoch, self.value, self.weights = 0, None, None

    def update(self, epoch: int, metrics: dict, model: torch.nn.Module) -> None:
        value = metrics[self.metric]
        if self.value is None or self.sign * (value - self.value) > 0:
            self.epoch, self.value = epoch, value
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


class TrialState:
    """Everything a checkpoint holds."""

    def __init__(self, config: dict, data: TrialData, device: torch.device, pretrained: dict | None = None):
        self.cfg = TrainConfig.from_config(config)
        torch.manual_seed(self.cfg.seed)          # same seed, same init: trials differ by their config only
        self.device = device
        self.model = build_model(config["model"], config, data.input_shape, data.num_classes).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # transfer: pretrained weights, layers that never train, the head's learning rate, the frozen backbone
        self.transfer = transfer.prepare(self.model, config, pretrained)
        self.steps_per_epoch = -(-len(data.train_idx) // self.cfg.batch_size)
        groups = transfer.optimizer_groups(self.model, self.cfg, self.transfer)
        self.optimizer = build_optimizer(self.model, self.cfg, groups)
        self.schedule = build_schedule(self.optimizer, self.cfg, self.steps_per_epoch)
        self.ema = WeightAverage(self.model, self.cfg.ema) if self.cfg.ema > 0 else None
        self.stopper = EarlyStopping(self.cfg.patience, self.cfg.early_stop_on, self.cfg.min_delta)
        self.best = Best(config.get("metric", "val_accuracy"), config.get("mode", "max"))
        self.gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
        self.epoch = 0
        self.ended: str | None = None      # why the trial ended, in the checkpoint it ended with
        # Compiled for training steps only: evaluation and checkpoints use the plain module (same weights).
        self.step_model = torch.compile(self.model) if self.cfg.compile else self.model

    def trainer(self, dd: DeviceData) -> Trainer:
        thaw = self.transfer.trainable_at if self.transfer.thaws else None
        return Trainer(self.step_model, self.optimizer, self.schedule, dd, self.cfg, self.gen, self.ema, thaw,
                       lambda: self.transfer.train_mode(self.step_model))

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated, checkpointed as model.pt and scored on the test set: the average if kept."""
        return self.ema.module if self.ema is not None else self.model

    def rng_states(self) -> dict:
        # Dropout draws from torch's default generators: theirs is part of where the trial is.
        states = {"rng": self.gen.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return states

    def save(self, folder: str) -> None:
        torch.save(self.eval_model.state_dict(), os.path.join(folder, MODEL_FILE))
        torch.save(self.best.weights or self.eval_model.state_dict(), os.path.join(folder, BEST_FILE))
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "stopper": self.stopper.state_dict(), "epoch": self.epoch, "ended": self.ended, **self.rng_states(),
                 "best": {"epoch": self.best.epoch, "value": self.best.value}}
        if self.ema is not None:   # model.pt holds the average; training goes on from the raw weights
            state.update(train_model=self.model.state_dict(), ema_steps=self.ema.steps)
        torch.save(state, os.path.join(folder, STATE_FILE))

    def load(self, folder: str | Path) -> None:
        read = lambda name, where: torch.load(Path(folder, name), map_location=where, weights_only=True)  # noqa: E731
        state = read(STATE_FILE, "cpu")   # RNG states stay on the CPU
        self.eval_model.load_state_dict(read(MODEL_FILE, self.device))
        if self.ema is not None:
            self.model.load_state_dict(state["train_model"])
            self.ema.steps = int(state["ema_steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.stopper.load_state_dict(state["stopper"])
        self.gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch = state["epoch"]
        self.ended = state.get("ended")
        self.best.epoch, self.best.value = state["best"]["epoch"], state["best"]["value"]
        self.best.weights = read(BEST_FILE, self.device) if self.best.value is not None else None


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


def epoch_metrics(state: TrialState, trainer: Trainer, dd: DeviceData) -> dict:
    """Train one epoch and evaluate: the epoch's metrics, with the seconds each part took."""
    lr = state.optimizer.param_groups[0]["lr"]    # the rate of the epoch's first step, before the schedule moves it
    t0 = time.perf_counter()
    train_loss, train_acc = trainer.epoch()
    seconds = time.perf_counter() - t0
    val_loss, val_acc = evaluate(state.eval_model, dd.x_val, dd.y_val, dd.mean, dd.std,
                                 eval_batch(state.cfg, state.device))
    return {"epoch": state.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
            "epoch_seconds": seconds, "eval_seconds": time.perf_counter() - t0 - seconds,
            "images_per_second": trainer.batches.images / seconds}


def diverged(metrics: dict, metric: str, mode: str) -> str | None:
    """A training loss no longer finite (a learning rate too high, most often) ends the trial with the worst
    score, not as a failure: the searcher learns from it, and a retry would diverge the same way."""
    loss = metrics["train_loss"]
    if math.isfinite(loss):
        return None
    metrics[metric] = worst_value(metric, mode)
    return f"diverged at epoch {metrics['epoch']}: training loss became {loss}"


def end_of(state: TrialState, stop: bool) -> str | None:
    if state.epoch == state.cfg.max_epochs:      # patience that runs out on the last epoch stopped nothing
        return "completed"
    return f"early-stopped by patience {state.cfg.patience} at epoch {state.epoch}" if stop else None


def run_trial(config: dict, data: TrialData, report: Report, start: str | Path | None = None,
              pretrained: dict | None = None, reporting: Reporting = Reporting()) -> None:
    """Train for ``config['max_epochs']`` epochs (or until early stopping), reporting as ``reporting`` says;
    ``pretrained`` is a state dict to start from (see ``tuner.transfer``)."""
    metric, mode = config.get("metric", "val_accuracy"), config.get("mode", "max")
    t0, device = time.perf_counter(), pick_device()
    try:
        state = TrialState(config, data, device, pretrained)
    except ArchitectureError as exc:
        # Rejected before training: the worst score teaches the searcher to avoid it; the search goes on.
        report({metric: worst_value(metric, mode), "epoch": 0, **unknown_costs(),
                "end_reason": f"invalid architecture: {exc}"}, None)
        return
    if start is not None:
        state.load(start)
    dd = device_data(data, device)
    trainer = state.trainer(dd)
    pending, overhead = [], {"setup_seconds": time.perf_counter() - t0}   # overhead: on the next epoch's record
    last_report, costs = time.monotonic(), {}
    # A checkpoint written as the trial ended (Ray may restart a trial from it) trains no further.
    while state.epoch < state.cfg.max_epochs and not state.ended and not state.stopper.stopped:
        state.epoch += 1
        _fault_hook(state.epoch)
        metrics = {**epoch_metrics(state, trainer, dd), **overhead}
        ended = diverged(metrics, metric, mode)
        if ended is None:       # a diverged epoch is no one's best: best_model.pt keeps the last good one
            state.best.update(state.epoch, metrics, state.eval_model)
            ended = end_of(state, state.stopper.update(state.epoch, metrics))
        state.ended = ended
        pending.append(metrics)
        if ended is None and not reporting.due(state.epoch, time.monotonic() - last_report):
            overhead = {}
            continue
        if not costs:   # once, at the first report: size and latency do not change with the weights
            costs = model_costs(state.eval_model, dd.x_val, dd.mean, dd.std)
            metrics.update(costs)
        overhead = send(state, report, pending, ended, costs)
        pending, last_report = [], time.monotonic()
        if ended:
            return


def send(state: TrialState, report: Report, epochs: list[dict], ended: str | None, costs: dict) -> dict:
    """Report the epochs since the last report, with a checkpoint and the network's ``costs`` (every result
    carries them); returns what it cost (seconds writing the checkpoint, and in ``report``: persisting it and
    waiting for the driver)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuner-ckpt-") as folder:
        state.save(folder)
        t1 = time.perf_counter()
        latest = {**costs, **epochs[-1], "epochs": epochs, "best_epoch": state.best.epoch}
        if state.best.value is not None:     # of every epoch, also those inside a result's list (progress line)
            latest["best_score"] = state.best.value
        report({**latest, "end_reason": ended} if ended else latest, folder)
    return {"checkpoint_seconds": t1 - t0, "report_seconds": time.perf_counter() - t1}


def train_trial(config: dict, data: TrialData, pretrained: dict | None = None,
                reporting: Reporting = Reporting()) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters`` to receive ``data``, the
    search's ``pretrained`` weights and when to report)."""
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
        run_trial(config, data, report, pretrained=pretrained, reporting=reporting)
    else:
        with checkpoint.as_directory() as folder:
            run_trial(config, data, report, start=folder, pretrained=pretrained, reporting=reporting)
