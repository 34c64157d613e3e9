"""Small pieces shared by the architectures: output-size arithmetic, activations, weight init."""

from __future__ import annotations

import torch.nn as nn

from models.registry import ArchitectureError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ArchitectureError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def conv_padding(padding, kernel_size: int) -> int:
    """'same' keeps the size at stride 1 (and gives ceil(H/stride) otherwise, as TensorFlow's 'same' does
    for odd kernels); 'valid' is no padding; an int is taken as is."""
    if padding == "same":
        return kernel_size // 2
    if padding in ("valid", "none", None):
        return 0
    if isinstance(padding, int) and padding >= 0:
        return padding
    raise ArchitectureError(f"padding {padding!r} is not 'same', 'valid' or a non-negative int")


def conv_out(size: int, kernel: int, stride: int, padding: int, where: str) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ArchitectureError(
            f"{where}: the {size}x{size} feature map shrinks below 1x1 (kernel {kernel}, stride {stride}, "
            f"padding {padding}); use fewer layers, a smaller kernel or stride, or 'same' padding"
        )
    return out


def parse_widths(text) -> list[int]:
    """'64-128' -> [64, 128]; '' or 'none' -> []. Widths travel as strings because Optuna's categorical
    choices must be scalars."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        return [int(w) for w in text]
    text = str(text).strip().lower()
    if text in ("", "none", "0"):
        return []
    try:
        widths = [int(w) for w in text.replace(",", "-").split("-")]
    except ValueError:
        raise ArchitectureError(f"layer widths {text!r} are not like '64' or '64-128'") from None
    if any(w < 1 for w in widths):
        raise ArchitectureError(f"layer widths {text!r} must be positive")
    return widths


INITS = ("default", "xavier", "kaiming")


def init_weights(model: nn.Module, scheme: str) -> None:
    """'default' keeps PyTorch's init; 'xavier' and 'kaiming' re-initialise conv and linear weights."""
    if scheme == "default":
        return
    init = {"xavier": nn.init.xavier_uniform_, "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")}
    if scheme not in init:
        raise ArchitectureError(f"init {scheme!r} is not one of {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init[scheme](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Normalized(nn.Module):
    """A classifier that takes images as float32 in [0, 1] (N, C, H, W) and standardises them itself, so a
    saved model carries its preprocessing."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        import torch

        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def named(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A Sequential whose layers have names (``conv1``, ``fc1``, ...), so that settings which name layers
    (``weight_decay_on``) read like the reports' tables instead of counting positions."""
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers))

