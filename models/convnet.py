"""A configurable conv net family: the knobs the course reports turned by hand.

    [conv (-> BN) -> act] x convs_per_block -> downsample -> dropout2d     repeated `depth` times
    flatten (or global average pool) -> [dropout -> linear -> act] per FC width -> linear to classes

Widths: block i has ``width * growth**i`` filters ("flat" = 1, "pyramid" = 2), or ``channels`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import activation, conv_out, conv_padding, init_weights, parse_widths
from models.registry import ArchitectureError, config_from, register_model

GROWTH = {"flat": 1.0, "pyramid": 2.0}
DOWNSAMPLE = ("maxpool", "avgpool", "stride", "none")


@dataclass
class ConvNetConfig:
    depth: int = 3                  # conv blocks
    convs_per_block: int = 1        # conv layers in each block
    width: int = 32                 # filters in the first block
    growth: str | float = "pyramid"  # "flat", "pyramid" or a factor per block
    max_width: int = 512            # cap on any block's filters
    channels: str = ""              # explicit filters per block, e.g. "16-32-64" (overrides the three above)
    kernel_size: int = 3            # pixels
    stride: int = 1                 # of every conv
    padding: str | int = "same"     # "same", "valid" or pixels
    downsample: str = "maxpool"     # after each block: maxpool, avgpool, stride (last conv strides 2), none
    pool_size: int = 2              # pixels, for maxpool / avgpool
    batch_norm: bool = False        # BatchNorm2d after each conv
    conv_dropout: float = 0.0       # Dropout2d after each block
    global_pool: bool = False       # average-pool the last map to 1x1 instead of flattening it
    fc: str = "128"                 # hidden FC widths, "64-128"; "" for none
    dropout: float = 0.0            # before each FC layer
    activation: str = "relu"
    init: str = "default"           # default, xavier, kaiming

    def block_widths(self) -> list[int]:
        if self.channels:
            return parse_widths(self.channels)
        factor = GROWTH.get(self.growth, self.growth)
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise ArchitectureError(f"growth {self.growth!r} is not 'flat', 'pyramid' or a number") from None
        return [min(self.max_width, max(1, round(self.width * factor**i))) for i in range(self.depth)]


def _block(cfg: ConvNetConfig, c_in: int, c_out: int, size: int, index: int) -> tuple[nn.Sequential, int]:
    """One block and the side of its output map; raises ArchitectureError if the map vanishes."""
    layers: list[nn.Module] = []
    pad = conv_padding(cfg.padding, cfg.kernel_size)
    for j in range(cfg.convs_per_block):
        last = j == cfg.convs_per_block - 1
        stride = 2 if (last and cfg.downsample == "stride") else cfg.stride
        where = f"block {index + 1} conv {j + 1}"
        size = conv_out(size, cfg.kernel_size, stride, pad, where)
        layers.append(nn.Conv2d(c_in, c_out, cfg.kernel_size, stride, pad, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(activation(cfg.activation))
        c_in = c_out
    if cfg.downsample in ("maxpool", "avgpool"):
        size = conv_out(size, cfg.pool_size, cfg.pool_size, 0, f"block {index + 1} {cfg.downsample}")
        pool = nn.MaxPool2d if cfg.downsample == "maxpool" else nn.AvgPool2d
        layers.append(pool(cfg.pool_size))
    if cfg.conv_dropout > 0:
        layers.append(nn.Dropout2d(cfg.conv_dropout))
    return nn.Sequential(*layers), size


def _classifier(in_features: int, hidden: list[int], num_classes: int, cfg: ConvNetConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers += [nn.Linear(in_features, width), activation(cfg.activation)]
        in_features = width
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        if cfg.downsample not in DOWNSAMPLE:
            raise ArchitectureError(f"downsample {cfg.downsample!r} is not one of {', '.join(DOWNSAMPLE)}")
        if cfg.depth < 1 or cfg.convs_per_block < 1:
            raise ArchitectureError("depth and convs_per_block must be at least 1")
        c_in, height, width = input_shape
        if height != width:
            raise ArchitectureError(f"square inputs only, got {height}x{width}")
        blocks, size = [], height
        for i, c_out in enumerate(cfg.block_widths()):
            block, size = _block(cfg, c_in, c_out, size, i)
            blocks.append(block)
            c_in = c_out
        if cfg.global_pool:
            blocks.append(nn.AdaptiveAvgPool2d(1))
            size = 1
        self.features = nn.Sequential(*blocks)
        self.classifier = _classifier(c_in * size * size, parse_widths(cfg.fc), num_classes, cfg)
        init_weights(self, cfg.init)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("convnet", ConvNetConfig)
def convnet(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Configurable conv net: depth, widths and their growth, kernel, stride, padding, pooling or strided
    convs, batch norm, dropout, FC widths."""
    return ConvNet(config_from(ConvNetConfig, config), input_shape, num_classes)
