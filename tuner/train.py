"""The training loop: epochs over device-resident uint8 tensors, evaluation, and early stopping.

Nothing here knows about Ray: ``tuner.trial`` drives it and reports what it returns. Fast by design: the
data never leaves the device, an epoch's order and augmentation are drawn up front there
(``tuner.batches``), every batch has the same shape, a step is replayed as a CUDA graph on CUDA
(``tuner.graphs``), and losses are read back once per epoch (no host sync per step).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import get_ema_multi_avg_fn

from models import ArchitectureError

from tuner.batches import DeviceData, EpochBatches, normalize
from tuner.graphs import StepRunner


@dataclass
class TrainConfig:
    """Every training hyperparameter a space may fix or search, with its default."""

    max_epochs: int = 10            # epochs, the ASHA budget (set from the space's scheduler section)
    batch_size: int = 64            # images per step
    optimizer: str = "adam"         # adam, adamw, sgd
    lr: float = 1e-3                # peak learning rate
    momentum: float = 0.9           # sgd only
    nesterov: bool = False          # sgd only
    weight_decay: float = 0.0       # L2 strength; coupled (= L2 in the loss) for adam and sgd, decoupled for adamw
    weight_decay_on: str = "all"    # which weights decay: all, conv, fc, or comma-separated module-name prefixes
    lr_schedule: str = "none"       # none, step, cosine, linear (warmup then linear decay to 0)
    lr_step_epochs: float = 30      # epochs between steps, for "step"
    lr_gamma: float = 0.1           # factor per step, for "step"
    warmup_epochs: float = 0.0      # epochs of linear warmup from 0, for cosine and linear
    label_smoothing: float = 0.0    # of the cross-entropy targets
    augment: str = "none"           # none, flip, crop, crop_flip  (on the device, per batch)
    crop_padding: int = 4           # pixels of zero padding for random crops
    patience: int = 0               # epochs without improvement before stopping the trial; 0 = never
    early_stop_on: str = "val_loss"  # val_loss or val_accuracy
    min_delta: float = 0.0          # smallest change that counts as an improvement
    grad_clip: float = 0.0          # max gradient norm; 0 = off
    eval_batch_size: int = 0        # images per evaluation step; 0 = 4,096 on CUDA, 128 on the CPU
    ema: float = 0.0                # decay per step of an average of the weights, which is then what is
                                    # evaluated and saved; 0 = off (0.99 to 0.999 with batches of 500+)
    compile: bool = False           # torch.compile the training forward pass (pays off on long GPU trials only)
    cuda_graphs: bool = True        # on CUDA: replay each training step as a CUDA graph (tuner.graphs)
    seed: int = 0                   # weights init, data order and augmentation

    @classmethod
    def from_config(cls, config: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


TRAIN_KEYS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}   # key -> annotated type
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "linear")
AUGMENTS = ("none", "flip", "crop", "crop_flip")


# ---- optimizer and schedule ------------------------------------------------------------------------------

def decayed_modules(model: nn.Module, which: str) -> set[str]:
    """Names of the conv/linear modules whose weights get weight decay."""
    names = set()
    prefixes = [p.strip() for p in which.split(",") if p.strip()]
    for name, m in model.named_modules():
        kind = "conv" if isinstance(m, nn.Conv2d) else "fc" if isinstance(m, nn.Linear) else None
        if kind is None:
            continue
        # "conv", "fc" and "all" are kinds wherever they stand in the list; anything else names layers
        if any(p in ("all", kind) or name == p or name.startswith(p + ".") for p in prefixes):
            names.add(name)
    return names


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Weights of the chosen conv/linear layers decay; biases, norms and the rest do not (as L2 on kernels
    in the reports' Keras/TensorFlow code)."""
    chosen = decayed_modules(model, cfg.weight_decay_on) if cfg.weight_decay > 0 else set()
    decay, plain = [], []
    for name, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (decay if name in chosen and pname == "weight" else plain).append(p)
    groups = [{"params": plain, "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": cfg.weight_decay})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg) if groups is None else groups   # tuner.transfer passes its own (head_lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        if cfg.nesterov and cfg.momentum == 0:     # torch refuses it; the trial is invalid, not failed
            raise ArchitectureError("nesterov: true needs momentum > 0 (Nesterov's method is a kind of momentum)")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise ValueError(f"optimizer {cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at a given optimizer step."""
    epoch = step / steps_per_epoch
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** math.floor(epoch / cfg.lr_step_epochs)
    if cfg.lr_schedule not in ("cosine", "linear"):
        return 1.0
    if epoch < cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    t = (epoch - cfg.warmup_epochs) / max(cfg.max_epochs - cfg.warmup_epochs, 1e-9)
    t = min(max(t, 0.0), 1.0)
    return 0.5 * (1 + math.cos(math.pi * t)) if cfg.lr_schedule == "cosine" else 1.0 - t


def build_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule {cfg.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, steps_per_epoch))


# ---- training steps, weight average, evaluation -----------------------------------------------------------

def autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed, and the tensor cores run it; CPU stays in fp32. No cast cache:
    # a captured step must cast the weights on every replay, not once.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


class WeightAverage:
    """An exponential moving average of a model's weights and buffers, updated after every step: what
    ``AveragedModel`` with ``get_ema_multi_avg_fn`` computes (the same update function), without its two
    host syncs per update (it reads its step count from the device)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.steps = 0
        self._update = get_ema_multi_avg_fn(decay)
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]))
        floats = [p for p in pairs if torch.is_floating_point(p[0])]
        counts = [p for p in pairs if not torch.is_floating_point(p[0])]    # e.g. batch norm's batch count
        self._groups = [tuple(map(list, zip(*group))) for group in (floats, counts) if group]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for averaged, current in self._groups:
            if self.steps == 0:
                torch._foreach_copy_(averaged, current)
            else:
                self._update(averaged, current, None)
        self.steps += 1


class Trainer:
    """A trial's training steps. Each step is the batch (gather, augment, normalise), forward, loss and
    backward as one unit, replayed as a CUDA graph on CUDA (``tuner.graphs``), then the optimizer, the
    schedule and the weight average. Loss and accuracy add up on the device and are read once an epoch.

    ``trainable`` (optional) is called before each step with the schedule's step and returns which
    parameters train now (transfer learning thaws a backbone at a given step); a change re-captures.
    ``train_mode`` (optional) puts the model in training mode at each epoch's start (transfer learning keeps
    frozen layers' batch norms in eval mode); default ``model.train()``."""

    def __init__(self, model, optimizer, schedule, data: DeviceData, cfg: TrainConfig, gen: torch.Generator,
                 ema: WeightAverage | None = None, trainable: Callable[[int], Hashable] | None = None,
                 train_mode: Callable[[], object] | None = None):
        self.model, self.optimizer, self.schedule, self.data, self.cfg = model, optimizer, schedule, data, cfg
        self.gen, self.ema, self.trainable = gen, ema, trainable
        self.train_mode = train_mode or model.train
        device = data.x_train.device
        self.batches = EpochBatches(len(data.y_train), cfg.batch_size, cfg.augment, cfg.crop_padding, device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        graphs = device.type == "cuda" and cfg.cuda_graphs and not cfg.compile   # compile brings its own
        self.runner = StepRunner(self._forward_backward, params, use_graph=graphs)

    def _forward_backward(self) -> None:
        x, y = self.batches.batch(self.data, self.index)
        with autocast(x.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        loss.backward()
        self.loss_sum += loss.detach().float()
        self.correct += (logits.argmax(1) == y).sum()
        self.index += 1

    def epoch(self) -> tuple[float, float]:
        """One pass over the train split; returns (mean loss, accuracy), read back once."""
        self.train_mode()
        self.batches.draw(self.gen)
        for t in (self.index, self.loss_sum, self.correct):
            t.zero_()
        for _ in range(self.batches.steps):
            self.runner(self.trainable(self.schedule.last_epoch) if self.trainable else None)
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            if self.ema is not None:
                self.ema.update(self.model)
        return self.loss_sum.item() / self.batches.steps, self.correct.item() / self.batches.images


CUDA_EVAL_BATCH = 4096   # images per evaluation step on CUDA: few launches
CPU_EVAL_BATCH = 128     # on a CPU a batch's activations then stay in its caches (BENCHMARKS.md, section 1)


def default_eval_batch(device: torch.device) -> int:
    return CUDA_EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH


def eval_batch(cfg: TrainConfig, device: torch.device) -> int:
    """Images per evaluation step: the setting, else the device's default."""
    return cfg.eval_batch_size or default_eval_batch(device)


@torch.inference_mode()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int | None = None):
    """(mean cross-entropy, accuracy) of ``model`` on uint8 images ``x``, in batches of ``batch_size``
    (default: the device's)."""
    batch_size = batch_size or default_eval_batch(x.device)
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        xb, yb = normalize(x[start:start + batch_size], mean, std), y[start:start + batch_size]
        with autocast(x.device):
            logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


@dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs without an improvement of ``monitor``; patience 0 never stops."""

    patience: int
    monitor: str = "val_loss"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, metrics: dict) -> bool:
        """Record this epoch; True when the trial should stop."""
        value = metrics[self.monitor]
        sign = -1.0 if self.monitor.endswith("loss") else 1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
