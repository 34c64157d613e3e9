"""The training loop: one epoch over device-resident uint8 tensors, evaluation, and early stopping.

Nothing here knows about Ray: ``tuner.trial`` drives it and reports what it returns. Fast by design:
the data never leaves the device, augmentation runs on whole batches there, shuffling is a device
``randperm``, and losses are read back once per epoch (no host sync per step).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    eval_batch_size: int = 1024     # images per evaluation step
    ema: float = 0.0                # decay per step of an average of the weights, which is then what is
                                    # evaluated and saved; 0 = off (0.99 to 0.999 with batches of 500+)
    compile: bool = False           # torch.compile the training forward pass (pays off on long GPU trials only)
    seed: int = 0                   # weights init, data order and augmentation

    @classmethod
    def from_config(cls, config: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


TRAIN_KEYS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}   # key -> annotated type
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "linear")
AUGMENTS = ("none", "flip", "crop", "crop_flip")


# ---- data on the device ----------------------------------------------------------------------------------

def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, standardised per channel; channels_last where the device likes it."""
    x = (x.float().div_(255) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """A different random translation for every image, as one gather over the zero-padded batch."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)            # (N, H+2p, W+2p, C)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]           # (N, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]           # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return xp[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.augment in ("crop", "crop_flip") and cfg.crop_padding > 0:
        x = random_crop(x, cfg.crop_padding, gen)
    if cfg.augment in ("flip", "crop_flip"):
        x = random_flip(x, gen)
    return x


# ---- optimizer and schedule ------------------------------------------------------------------------------

def decayed_modules(model: nn.Module, which: str) -> set[str]:
    """Names of the conv/linear modules whose weights get weight decay."""
    names = set()
    prefixes = [p.strip() for p in which.split(",") if p.strip()]
    for name, m in model.named_modules():
        kind = "conv" if isinstance(m, nn.Conv2d) else "fc" if isinstance(m, nn.Linear) else None
        if kind is None:
            continue
        if which == "all" or which == kind or any(name == p or name.startswith(p + ".") for p in prefixes):
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


# ---- one epoch, evaluation -------------------------------------------------------------------------------

@dataclass
class DeviceData:
    x_train: torch.Tensor   # uint8 (N, C, H, W)
    y_train: torch.Tensor   # int64 (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor      # (1, C, 1, 1), [0, 1] units
    std: torch.Tensor


def autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed, and the tensor cores run it; CPU stays in fp32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_epoch(model, opt, schedule, data: DeviceData, cfg: TrainConfig, gen: torch.Generator, ema=None):
    """One pass over the train split; returns (mean loss, accuracy) read back once. ``ema`` (an
    ``AveragedModel``) is updated after every step."""
    model.train()
    device = data.x_train.device
    n = len(data.y_train)
    order = torch.randperm(n, generator=gen, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, n, cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        if len(idx) < 2:        # batch norm cannot train on a single image
            continue
        x = normalize(augment(data.x_train[idx], cfg, gen), data.mean, data.std)
        y = data.y_train[idx]
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


@torch.inference_mode()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 1024):
    """(mean cross-entropy, accuracy) of ``model`` on uint8 images ``x``."""
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
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
