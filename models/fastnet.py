"""Small BatchNorm residual nets for fast CIFAR training: the ResNet-9 of the public fast-training records
(Page's DAWNBench entry: 94% CIFAR-10 test accuracy in 24 epochs), its width a setting so a search can trade
accuracy for speed.

    prep:   conv(w) BN ReLU
    layer1: conv(2w) BN ReLU maxpool2, + residual [conv(2w) BN ReLU] x 2
    layer2: conv(4w) BN ReLU maxpool2
    layer3: conv(8w) BN ReLU maxpool2, + residual [conv(8w) BN ReLU] x 2
    head:   global max pool -> linear (no bias) -> x scale
All convs 3x3, padding 1, no bias (BatchNorm follows). Module names: features.prep, features.layer1.conv,
features.layer1.res.0.conv, ..., classifier.fc.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import conv_out
from models.registry import ArchitectureError, config_from, register_model


@dataclass
class ResNet9Config:
    width: int = 64          # channels of the prep layer; the three stages have 2x, 4x and 8x
    scale: float = 0.125     # logits multiplier: small logits early keep the large-batch SGD start stable
    bn_momentum: float = 0.1  # of the BatchNorm running statistics (PyTorch's convention)


class ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, momentum: float):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)


class Residual(nn.Module):
    def __init__(self, channels: int, momentum: float):
        super().__init__()
        self.res = nn.Sequential(ConvBN(channels, channels, momentum), ConvBN(channels, channels, momentum))

    def forward(self, x):
        return x + self.res(x)


class Stage(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, momentum: float, residual: bool):
        super().__init__()
        self.conv = ConvBN(c_in, c_out, momentum)
        self.pool = nn.MaxPool2d(2)
        if residual:
            self.residual = Residual(c_out, momentum)


class ResNet9(nn.Module):
    def __init__(self, cfg: ResNet9Config, input_shape, num_classes: int):
        super().__init__()
        if cfg.width < 1:
            raise ArchitectureError(f"width must be at least 1, got {cfg.width}")
        size, w, m = input_shape[1], cfg.width, cfg.bn_momentum
        for stage in (1, 2, 3):
            size = conv_out(size, 2, 2, 0, f"layer{stage} maxpool")
        self.features = nn.Sequential()
        self.features.add_module("prep", ConvBN(input_shape[0], w, m))
        self.features.add_module("layer1", Stage(w, 2 * w, m, residual=True))
        self.features.add_module("layer2", Stage(2 * w, 4 * w, m, residual=False))
        self.features.add_module("layer3", Stage(4 * w, 8 * w, m, residual=True))
        self.features.add_module("pool", nn.AdaptiveMaxPool2d(1))
        self.features.add_module("flatten", nn.Flatten())
        self.classifier = nn.Sequential()
        self.classifier.add_module("fc", nn.Linear(8 * w, num_classes, bias=False))
        self.scale = cfg.scale

    def forward(self, x):
        return self.classifier(self.features(x)) * self.scale


@register_model("resnet9", ResNet9Config)
def resnet9(config: dict, input_shape, num_classes: int) -> nn.Module:
    """ResNet-9 of the fast CIFAR-10 training records (w-2w-4w-8w, two residual blocks, max-pool head)."""
    return ResNet9(config_from(ResNet9Config, config), input_shape, num_classes)
