"""Report 000's CIFAR-10 CNN (TensorFlow, its Figure 1), the TensorFlow tutorial's network:

    conv 5x5, 64 -> ReLU -> maxpool 3x3 stride 2 -> conv 5x5, 64 -> ReLU -> maxpool 3x3 stride 2
    -> flatten ("flatten") -> FC 384 -> ReLU ("f1") -> FC 192 -> ReLU ("f2") -> FC 10

"same" padding throughout, as TensorFlow's tutorial: 32 -> 16 -> 8, so 8x8x64 = 4,096 features are flattened
(1,756,426 parameters). The tutorial's local response normalisation is not in the report's graph
(conv-pool-conv-pool), so it is left out. The report's L2 (strength 0.01) was on the FC weights only:
``weight_decay_on: fc``. TensorFlow's ``0.01 * tf.nn.l2_loss(w)`` is ``0.01 * sum(w**2) / 2``, whose gradient
``0.01 * w`` is exactly what ``weight_decay: 0.01`` adds here.

Layer names (for ``weight_decay_on``): ``features.conv1``, ``features.conv2``, ``classifier.fc1``,
``classifier.fc2``, ``classifier.out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import conv_out, named, parse_widths
from models.registry import config_from, register_model


@dataclass
class Report000Config:
    filters: int = 64             # of each conv
    kernel_size: int = 5          # pixels, "same" padding
    fc: str = "384-192"           # hidden FC widths (the report's VGG head also tried 512-256)
    dropout: float = 0.0          # before each FC layer (the report used none)


class Report000Net(nn.Module):
    def __init__(self, cfg: Report000Config, input_shape, num_classes: int):
        super().__init__()
        c_in, size, k = input_shape[0], input_shape[1], cfg.kernel_size
        layers: list[tuple[str, nn.Module]] = []
        for i in (1, 2):
            size = conv_out(size, k, 1, k // 2, f"conv {i}")
            size = conv_out(size, 3, 2, 1, f"maxpool {i}")      # 3x3 stride 2 "same": ceil(H / 2)
            layers += [(f"conv{i}", nn.Conv2d(c_in, cfg.filters, k, padding=k // 2)), (f"relu{i}", nn.ReLU()),
                       (f"pool{i}", nn.MaxPool2d(3, 2, padding=1))]
            c_in = cfg.filters
        self.features = named(*layers)
        self.classifier = fc_head(c_in * size * size, parse_widths(cfg.fc), num_classes, cfg.dropout)

    def forward(self, x):
        return self.classifier(self.features(x))


def fc_head(in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """flatten -> [dropout -> fc_i -> ReLU] per hidden width -> dropout -> out (no dropout layers at 0)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, width in enumerate(hidden, 1):
        if dropout > 0:
            layers.append((f"drop{i}", nn.Dropout(dropout)))
        layers += [(f"fc{i}", nn.Linear(in_features, width)), (f"relu_fc{i}", nn.ReLU())]
        in_features = width
    if dropout > 0:
        layers.append(("drop_out", nn.Dropout(dropout)))
    layers.append(("out", nn.Linear(in_features, num_classes)))
    return named(*layers)


@register_model("report000_cnn", Report000Config)
def report000_cnn(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 000's TensorFlow-tutorial CNN: conv 5x5 64 -> pool -> conv 5x5 64 -> pool, FC 384-192."""
    return Report000Net(config_from(Report000Config, config), input_shape, num_classes)
