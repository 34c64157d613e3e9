"""Report 001's multilayer perceptron (its section 2.1): flatten -> FC 300 -> ReLU -> FC to the classes,
Kaiming-uniform init (PyTorch's default for linear layers, which the report kept). The report resized its
face images to 28x28; on MNIST this is 784 -> 300 -> 10, 238,510 parameters.

Report 001's CNN (sections 1.2-1.6: 2 conv + 2 FC, pooling, dropout 0.25 after flattening and before the
last layer) gives no widths or kernel sizes; ``convnet`` with ``depth: 2``, one hidden FC width and
``dropout: 0.25`` is that network (its dropout sits exactly there).

Layer names (for ``weight_decay_on``): ``features.fc1`` (the hidden layer), ``classifier.out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from models.layers import named
from models.registry import ArchitectureError, config_from, register_model


@dataclass
class MLPConfig:
    hidden: int = 300             # units of the hidden layer
    dropout: float = 0.0          # before the output layer (the report used none)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, input_shape, num_classes: int):
        super().__init__()
        if cfg.hidden < 1:
            raise ArchitectureError(f"hidden must be at least 1, got {cfg.hidden}")
        c, h, w = input_shape
        self.features = named(("flatten", nn.Flatten()), ("fc1", nn.Linear(c * h * w, cfg.hidden)),
                              ("relu1", nn.ReLU()))
        head = [("drop", nn.Dropout(cfg.dropout))] if cfg.dropout > 0 else []
        self.classifier = named(*head, ("out", nn.Linear(cfg.hidden, num_classes)))

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("report001_mlp", MLPConfig)
def report001_mlp(config: dict, input_shape, num_classes: int) -> nn.Module:
    """Report 001's MLP: one hidden layer of 300 ReLU units."""
    return MLP(config_from(MLPConfig, config), input_shape, num_classes)
