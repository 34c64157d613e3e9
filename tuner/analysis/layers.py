"""The layers of any network, found generically, and what they output, read through forward hooks.

A layer is a ``Conv2d`` or ``Linear`` module, in the order ``named_modules`` gives them (the order of the
forward pass for the Sequential-built networks of ``models/``): conv1, conv2, ..., fc1, fc2, ... What a
layer outputs is read after the normalisation and activation modules that directly follow it in the same
container, as the reports' frameworks (Keras layers with ``activation=``) gave it. "flatten" is the
input of the first FC layer: the conv features as the classifier sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tuner.analysis.settings import BATCH_SIZE

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.Tanh, nn.Sigmoid,
               nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


@dataclass
class Layer:
    name: str                  # conv1, fc2, flatten
    path: str                  # the module's path in the network, e.g. features.0.0
    module: nn.Module          # the Conv2d or Linear
    tap: nn.Module             # the module whose output (or, for flatten, input) is read
    pre: bool = False          # read the tap's input instead of its output
    after: str = ""            # the modules read through, e.g. "BatchNorm2d + ReLU"

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d) and not self.pre

    def describe(self) -> str:
        m = self.module
        if self.pre:
            return f"input of {self.path} ({m.in_features} features)"
        shape = (f"Conv2d {m.in_channels}->{m.out_channels}, {m.kernel_size[0]}x{m.kernel_size[1]}, "
                 f"stride {m.stride[0]}" if self.is_conv else f"Linear {m.in_features}->{m.out_features}")
        return f"{self.path}: {shape}" + (f" + {self.after}" if self.after else "")


def _leaves(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in net.named_modules() if path and not any(True for _ in m.children())]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def weighted_layers(net: nn.Module) -> list[Layer]:
    """Every conv and FC layer, in order, each read after its normalisation and activation."""
    leaves, out, counts = _leaves(net), [], {"conv": 0, "fc": 0}
    for i, (path, module) in enumerate(leaves):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
        counts[kind] += 1
        tap, after = module, []
        for next_path, nxt in leaves[i + 1:]:
            if not isinstance(nxt, NORMS + ACTIVATIONS) or _parent(next_path) != _parent(path):
                break
            tap = nxt
            after.append(type(nxt).__name__)
        out.append(Layer(f"{kind}{counts[kind]}", path, module, tap, after=" + ".join(after)))
    return out


def probe_layers(net: nn.Module) -> list[Layer]:
    """flatten and every FC layer (report 000 probed flatten, f1, f2); none for a net without FC layers."""
    fcs = [layer for layer in weighted_layers(net) if not layer.is_conv]
    if not fcs:
        return []
    first = fcs[0]
    return [Layer("flatten", first.path, first.module, first.module, pre=True), *fcs]


def conv_layers(net: nn.Module) -> list[Layer]:
    return [layer for layer in weighted_layers(net) if layer.is_conv]


def as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> what the logged model takes: float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


@torch.no_grad()
def forward(model: nn.Module, images: np.ndarray, layers: list[Layer] = (), flatten: bool = True):
    """(logits (N, classes), {layer name: its outputs (N, ...)}) in batches; outputs flattened per image
    unless ``flatten`` is off."""
    store: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}

    def keep(name: str, t: torch.Tensor) -> None:
        store[name].append((t.flatten(1) if flatten else t).detach().clone())

    handles = [layer.tap.register_forward_pre_hook(lambda m, args, n=layer.name: keep(n, args[0])) if layer.pre
               else layer.tap.register_forward_hook(lambda m, args, out, n=layer.name: keep(n, out))
               for layer in layers]
    try:
        logits = [model(as_input(images[i:i + BATCH_SIZE])) for i in range(0, len(images), BATCH_SIZE)]
    finally:
        for h in handles:
            h.remove()
    features = {name: torch.cat(parts).numpy() for name, parts in store.items()}
    return torch.cat(logits).numpy(), features
