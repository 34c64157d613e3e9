"""Report 004's CIFAR-10 networks (PyTorch, TDT4265 2019), exactly as its section 1 and Table 2 list them.

LeNet (section 1): [conv 5x5 -> ReLU -> maxpool 2x2] with 32, 64, 128 filters -> flatten (4x4x128) -> FC 64
-> ReLU -> FC 10. Its 390,410 parameters are 10 more than the report's 390,400: its equation (5) counts the
output layer as 64 x 10 and leaves out that layer's 10 biases (2,432 + 51,264 + 204,928 + 131,136 + 650).

Model 2 (Table 2, right): the LeNet with Dropout2d (10%) right after conv 1, BatchNorm2d after each conv and
BatchNorm1d after FC 64, each before its ReLU; Xavier init. ``report004_lenet`` with ``batch_norm: true``,
``conv_dropout: 0.1``, ``init: xavier`` is the same network; ``report004_model2`` has those defaults.

Model 1 (Table 2, left): conv 32 -> ReLU -> Dropout2d -> BN -> pool; conv 64 -> ReLU -> conv 128 -> ReLU ->
BN -> pool; conv 256 -> ReLU -> conv 512 -> ReLU -> BN -> pool; flatten -> FC 2048 -> ReLU -> FC 64 -> ReLU ->
BatchNorm1d -> FC 10; Xavier init. The report does not give its kernel size: 3x3 "same" by default.

Layer names (for ``weight_decay_on``): ``features.conv1`` .. ``features.conv3`` (``.conv5`` in Model 1),
``features.bn1``.., ``classifier.fc1`` (``.fc2`` in Model 1), ``classifier.out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import conv_out, init_weights, named
from models.registry import ArchitectureError, config_from, register_model


@dataclass
class LeNetConfig:
    kernel_size: int = 5          # pixels, every conv, "same" padding (the report: 5x5, padding 2)
    batch_norm: bool = False      # BatchNorm2d after each conv, BatchNorm1d after FC 64, before ReLU (Model 2)
    conv_dropout: float = 0.0     # Dropout2d right after conv 1 (Model 2: 0.1)
    init: str = "default"         # default, xavier (Model 2), kaiming


@dataclass
class Model2Config(LeNetConfig):
    batch_norm: bool = True
    conv_dropout: float = 0.1
    init: str = "xavier"


@dataclass
class Model1Config:
    kernel_size: int = 3          # pixels, every conv, "same" padding (not given in the report)
    conv_dropout: float = 0.1     # Dropout2d after conv 1 (the report: 10%; 30% did worse)
    downsample: str = "maxpool"   # maxpool, or stride: the conv before each pool strides 2 (the report tried both)
    init: str = "xavier"          # default, xavier (the report's), kaiming


def _side(size: int, kernel: int, stride: int, where: str) -> int:
    return conv_out(size, kernel, stride, kernel // 2, where)


class LeNet(nn.Module):
    def __init__(self, cfg: LeNetConfig, input_shape, num_classes: int):
        super().__init__()
        c_in, size, k = input_shape[0], input_shape[1], cfg.kernel_size
        layers: list[tuple[str, nn.Module]] = []
        for i, width in enumerate((32, 64, 128), 1):
            size = _side(size, k, 1, f"conv {i}")
            layers.append((f"conv{i}", nn.Conv2d(c_in, width, k, padding=k // 2)))
            if i == 1 and cfg.conv_dropout > 0:
                layers.append(("drop1", nn.Dropout2d(cfg.conv_dropout)))
            if cfg.batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(width)))
            size = conv_out(size, 2, 2, 0, f"maxpool {i}")
            layers += [(f"relu{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool2d(2))]
            c_in = width
        self.features = named(*layers)
        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten()), ("fc1", nn.Linear(128 * size * size, 64))]
        if cfg.batch_norm:
            head.append(("bn_fc1", nn.BatchNorm1d(64)))
        head += [("relu_fc1", nn.ReLU()), ("out", nn.Linear(64, num_classes))]
        self.classifier = named(*head)
        init_weights(self, cfg.init)

    def forward(self, x):
        return self.classifier(self.features(x))


# Model 1's convolutions: (name, filters, what follows its ReLU). A "pool" closes each of the three blocks.
MODEL1_CONVS = (("conv1", 32, ("drop", "bn", "pool")), ("conv2", 64, ()), ("conv3", 128, ("bn", "pool")),
                ("conv4", 256, ()), ("conv5", 512, ("bn", "pool")))


class Model1(nn.Module):
    def __init__(self, cfg: Model1Config, input_shape, num_classes: int):
        super().__init__()
        if cfg.downsample not in ("maxpool", "stride"):
            raise ArchitectureError(f"downsample {cfg.downsample!r} is not maxpool or stride")
        c_in, size, k = input_shape[0], input_shape[1], cfg.kernel_size
        layers: list[tuple[str, nn.Module]] = []
        for name, width, after in MODEL1_CONVS:
            stride = 2 if "pool" in after and cfg.downsample == "stride" else 1
            size = _side(size, k, stride, name)
            layers += [(name, nn.Conv2d(c_in, width, k, stride, k // 2)), (f"relu{name[-1]}", nn.ReLU())]
            if "drop" in after and cfg.conv_dropout > 0:
                layers.append(("drop1", nn.Dropout2d(cfg.conv_dropout)))
            if "bn" in after:
                layers.append((f"bn{name[-1]}", nn.BatchNorm2d(width)))
            if "pool" in after and cfg.downsample == "maxpool":
                size = conv_out(size, 2, 2, 0, f"maxpool after {name}")
                layers.append((f"pool{name[-1]}", nn.MaxPool2d(2)))
            c_in = width
        self.features = named(*layers)
        self.classifier = named(("flatten", nn.Flatten()), ("fc1", nn.Linear(c_in * size * size, 2048)),
                                ("relu_fc1", nn.ReLU()), ("fc2", nn.Linear(2048, 64)), ("relu_fc2", nn.ReLU()),
                                ("bn_fc2", nn.BatchNorm1d(64)), ("out", nn.Linear(64, num_classes)))
        init_weights(self, cfg.init)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("report004_lenet", LeNetConfig)
def report004_lenet(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 004's LeNet: conv 32-64-128 5x5 + max pools, FC 64 (390,410 parameters); batch_norm and
    conv_dropout turn it into Model 2."""
    return LeNet(config_from(LeNetConfig, config), input_shape, num_classes)


@register_model("report004_model2", Model2Config)
def report004_model2(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 004's Model 2: the LeNet with Dropout2d 10% after conv 1, BatchNorm before every ReLU, Xavier init."""
    return LeNet(config_from(Model2Config, config), input_shape, num_classes)


@register_model("report004_model1", Model1Config)
def report004_model1(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 004's Model 1: conv 32, (conv-relu-conv-relu-pool) x2 up to 512 filters, BatchNorm before each
    pool, Dropout2d 10%, FC 2048-64, Xavier init."""
    return Model1(config_from(Model1Config, config), input_shape, num_classes)
