"""Report 003's networks (Keras, Fall 2021), with kernel size, stride and padding as parameters.

MNIST (Table 1): conv 4 -> maxpool -> conv 8 -> maxpool -> conv 16 -> flatten -> FC 64 -> FC 10
CIFAR-10 (Table 4): conv 16 -> maxpool -> conv 32 -> maxpool -> conv 64 -> flatten -> FC 64 -> FC 128 -> FC 10
ReLU after every conv and hidden FC; 2x2 max pools. Keras pads "same" asymmetrically for strides > 1;
symmetric k//2 padding gives the same output sizes (ceil(H / stride)) for the odd kernels the report used.

Layer names (for ``weight_decay_on``): ``features.conv1`` .. ``features.conv3``, ``classifier.fc1``
(``classifier.fc2`` on CIFAR-10) and ``classifier.out``. Report 003's Table 7 put L2 on "the first and
third convolutional layer and the first fully connected layer": ``features.conv1,features.conv3,classifier.fc1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import conv_out, conv_padding, named
from models.registry import config_from, register_model


@dataclass
class Report003Config:
    kernel_size: int = 5          # pixels, every conv (report: 3, 5, 7)
    stride: int = 1               # every conv (report: 1, 2, 3)
    padding: str | int = "same"   # "same" or "valid" ("none" in the report)


@dataclass
class Report003CifarConfig(Report003Config):
    kernel_size: int = 3          # pixels, every conv (report: 3, 5)


def conv_stack(cfg: Report003Config, in_ch: int, size: int, widths: list[int]) -> tuple[nn.Sequential, int, int]:
    """conv-relu(-maxpool) per width; a pool after every conv but the last. Returns (stack, channels, side)."""
    pad = conv_padding(cfg.padding, cfg.kernel_size)
    layers: list[tuple[str, nn.Module]] = []
    for i, width in enumerate(widths, 1):
        size = conv_out(size, cfg.kernel_size, cfg.stride, pad, f"conv {i}")
        layers += [(f"conv{i}", nn.Conv2d(in_ch, width, cfg.kernel_size, cfg.stride, pad)), (f"relu{i}", nn.ReLU())]
        if i < len(widths):
            size = conv_out(size, 2, 2, 0, f"maxpool {i}")
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
        in_ch = width
    return named(*layers), in_ch, size


def mlp_head(in_features: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    """flatten -> [fc_i -> relu] per hidden width -> out."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, width in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(in_features, width)), (f"relu{i}", nn.ReLU())]
        in_features = width
    layers.append(("out", nn.Linear(in_features, num_classes)))
    return named(*layers)


class Report003Net(nn.Module):
    def __init__(self, cfg: Report003Config, input_shape, num_classes: int, widths: list[int], fc: list[int]):
        super().__init__()
        self.features, channels, size = conv_stack(cfg, input_shape[0], input_shape[1], widths)
        self.classifier = mlp_head(channels * size * size, fc, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("report003_mnist", Report003Config)
def report003_mnist(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 003's MNIST CNN: conv 4-8-16 (5x5, same), max pools after conv 1 and 2, FC 64."""
    return Report003Net(config_from(Report003Config, config), input_shape, num_classes, [4, 8, 16], [64])


@register_model("report003_cifar", Report003CifarConfig)
def report003_cifar(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 003's CIFAR-10 CNN: conv 16-32-64 (3x3, same), max pools after conv 1 and 2, FC 64-128."""
    return Report003Net(config_from(Report003CifarConfig, config), input_shape, num_classes, [16, 32, 64], [64, 128])
