"""Architectures registered by name.

A builder takes the trial's flat config dict, the input shape (C, H, W) and the number of classes, and
returns an ``nn.Module`` that maps a float batch (N, C, H, W) to logits (N, num_classes). Each entry also
declares the config keys it reads, so a space file that names a key no part of the system reads is
rejected when it is loaded rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn


class ArchitectureError(ValueError):
    """The config cannot make a working network for this input (e.g. the feature map shrinks below 1x1)."""


Builder = Callable[[dict, tuple[int, int, int], int], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    params: dict[str, str]      # config key -> its type as annotated ("int", "str | float", ...)
    description: str


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type | None = None, params: tuple[str, ...] = ()):
    """Decorator: register ``builder`` under ``name``; its config keys are ``config_cls``'s fields (typed)
    and ``params`` (untyped)."""

    def wrap(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        keys = {p: "any" for p in params}
        if config_cls is not None:
            keys.update({f.name: str(f.type) for f in dataclasses.fields(config_cls)})
        doc = " ".join((builder.__doc__ or "").split())
        MODELS[name] = ModelEntry(name, builder, keys, doc)
        return builder

    return wrap


def config_from(config_cls: type, config: dict[str, Any]):
    """Build a config dataclass from the keys of a flat trial config that belong to it."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in config.items() if k in names})


def build_model(name: str, config: dict, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name].builder(config, tuple(input_shape), num_classes)


def model_params(name: str) -> dict[str, str]:
    return MODELS[name].params
