"""Report 002's CIFAR network (its Experiment 1): three blocks of (convolution, pooling, ReLU, local response
normalisation), then one inner-product (FC) layer to the softmax.

The report names the layers but not their sizes; the layer order, the Caffe vocabulary ("inner-product") and
the snapshots every 10,000 iterations are those of Caffe's ``cifar10_full`` example, whose sizes are used:
conv 5x5 with 32, 32, 64 filters (padding 2), 3x3 pools of stride 2 (Caffe rounds up: 32 -> 16 -> 8 -> 4),
LRN over a 3x3 window within each channel (alpha 5e-5, beta 0.75), FC 1,024 -> classes: 89,578 parameters
on CIFAR-10. Caffe's example pools max, then average twice; the report only says "pooling": ``pool``.

For CIFAR-100 (Experiments 3 and 4) the head is replaced: ``classifier.out`` is the new layer, the three
blocks are the backbone (see ``pretrained``, ``refine_start_step`` and ``head_lr``).

Layer names (for ``weight_decay_on``): ``features.conv1`` .. ``features.conv3``, ``classifier.out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import conv_out, named
from models.registry import ArchitectureError, config_from, register_model

POOLS = ("max", "avg", "caffe")   # caffe: max, then average, average (cifar10_full)
LRN = ("within", "across", "none")


@dataclass
class Report002Config:
    pool: str = "max"             # max, avg, or caffe (max, avg, avg)
    lrn: str = "within"           # within (each channel, 3x3 window: Caffe's), across (channels: AlexNet's), none
    lrn_alpha: float = 5e-5       # Caffe cifar10_full's
    lrn_beta: float = 0.75


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``: x / (1 + alpha * mean of x^2 over a size x size window,
    zero padded)^beta."""

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x):
        mean_sq = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x * torch.pow(1 + self.alpha * mean_sq, -self.beta)


def _norm(cfg: Report002Config) -> nn.Module:
    if cfg.lrn == "within":
        return WithinChannelLRN(3, cfg.lrn_alpha, cfg.lrn_beta)
    # PyTorch divides alpha by the window like Caffe's ACROSS_CHANNELS does.
    return nn.LocalResponseNorm(3, cfg.lrn_alpha, cfg.lrn_beta) if cfg.lrn == "across" else nn.Identity()


def _pool(cfg: Report002Config, i: int) -> nn.Module:
    kind = cfg.pool if cfg.pool != "caffe" else ("max" if i == 1 else "avg")
    return nn.MaxPool2d(3, 2, ceil_mode=True) if kind == "max" else nn.AvgPool2d(3, 2, ceil_mode=True)


class Report002Net(nn.Module):
    def __init__(self, cfg: Report002Config, input_shape, num_classes: int):
        super().__init__()
        if cfg.pool not in POOLS or cfg.lrn not in LRN:
            raise ArchitectureError(f"pool must be one of {', '.join(POOLS)} and lrn one of {', '.join(LRN)}")
        c_in, size = input_shape[0], input_shape[1]
        layers: list[tuple[str, nn.Module]] = []
        for i, width in enumerate((32, 32, 64), 1):
            size = conv_out(size, 5, 1, 2, f"conv {i}")
            conv_out(size, 3, 2, 0, f"pool {i}")                 # raises if the map is already below 3x3
            size = (size - 2) // 2 + 1                              # Caffe's ceil((H - 3) / 2) + 1
            layers += [(f"conv{i}", nn.Conv2d(c_in, width, 5, padding=2)), (f"pool{i}", _pool(cfg, i)),
                       (f"relu{i}", nn.ReLU()), (f"norm{i}", _norm(cfg))]
            c_in = width
        self.features = named(*layers)
        self.classifier = named(("flatten", nn.Flatten()), ("out", nn.Linear(c_in * size * size, num_classes)))

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("report002_cnn", Report002Config)
def report002_cnn(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 002's CIFAR net: 3 x (conv 5x5, pool 3x3/2, ReLU, LRN) with 32-32-64 filters, then one FC layer."""
    return Report002Net(config_from(Report002Config, config), input_shape, num_classes)
