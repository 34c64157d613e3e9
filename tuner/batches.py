"""A training epoch's batches, drawn up front on the device: the order of the images and every augmentation
draw, in tensors that a step reads by its index.

Every batch has the same shape (the epoch's last batch is completed with images from the start of the
order), and a step never asks the host for anything: so one step can be captured and replayed as a CUDA
graph (``tuner.graphs``), and on any device an epoch runs without a host sync until its end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DeviceData:
    x_train: torch.Tensor   # uint8 (N, C, H, W)
    y_train: torch.Tensor   # int64 (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor      # (1, C, 1, 1), [0, 1] units
    std: torch.Tensor


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, standardised per channel; channels_last where the device likes it."""
    x = (x.float().div_(255) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def crop(x: torch.Tensor, pad: int, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image by its own (dy, dx) in [0, 2 * pad] within its zero-padded frame: one gather
    over the padded batch. ``shifts``: int64 (N, 2)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)               # (N, H+2p, W+2p, C)
    rows = (shifts[:, :1] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (shifts[:, 1:] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return xp[batch, rows, cols].permute(0, 3, 1, 2)


def flip(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``which`` (bool, (N,)) is true."""
    return torch.where(which[:, None, None, None], x.flip(3), x)


class EpochBatches:
    """The batches of one epoch: ``draw`` fills the order and the augmentation draws in place (the tensors
    keep their addresses, which a captured graph reads), ``batch`` gives the step's normalised images."""

    def __init__(self, n: int, batch_size: int, augment: str, crop_padding: int, device: torch.device):
        self.n, self.size, self.device = n, batch_size, device
        self.steps = -(-n // batch_size)                         # ceil: every image at least once an epoch
        self.pad = crop_padding if augment in ("crop", "crop_flip") else 0
        self.order = torch.zeros(self.steps, batch_size, dtype=torch.long, device=device)
        self.shift = torch.zeros(self.steps, batch_size, 2, dtype=torch.long, device=device) if self.pad else None
        self.mirror = torch.zeros(self.steps, batch_size, dtype=torch.bool, device=device) \
            if augment in ("flip", "crop_flip") else None

    @property
    def images(self) -> int:
        """Images a full epoch trains on (the last batch's completion included)."""
        return self.steps * self.size

    def draw(self, gen: torch.Generator) -> None:
        perm = torch.randperm(self.n, generator=gen, device=self.device)
        repeats = -(-self.images // self.n)                      # > 1 only when a batch outnumbers the images
        self.order.copy_(perm.repeat(repeats)[:self.images].view(self.steps, self.size))
        if self.shift is not None:
            self.shift.copy_(torch.randint(0, 2 * self.pad + 1, self.shift.shape, generator=gen, device=self.device))
        if self.mirror is not None:
            self.mirror.copy_(torch.rand(self.mirror.shape, generator=gen, device=self.device) < 0.5)

    def batch(self, data: DeviceData, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images, labels) of batch ``step``, a (1,) int64 tensor on the device: read by index
        select, never by a Python int, so the step's number never leaves the device."""
        idx = self.order.index_select(0, step)[0]
        x = data.x_train.index_select(0, idx)
        if self.shift is not None:
            x = crop(x, self.pad, self.shift.index_select(0, step)[0])
        if self.mirror is not None:
            x = flip(x, self.mirror.index_select(0, step)[0])
        return normalize(x, data.mean, data.std), data.y_train.index_select(0, idx)
