"""Architectures, registered by name (see ``models.registry``). Importing this package registers them all."""

from models.registry import MODELS, ArchitectureError, build_model, model_params, register_model
from models import (  # noqa: F401  (importing registers them)
    convnet, fastnet, layers, report000, report001, report002, report003, report004, transfer)

# The closed sets of the models' text settings, by setting name: a space file's value is checked against them
# when it is loaded (a typo would otherwise make every trial an invalid architecture).
MODEL_VALUES = {"activation": tuple(layers.ACTIVATIONS), "init": layers.INITS, "downsample": convnet.DOWNSAMPLE,
                "pool": report002.POOLS, "lrn": report002.LRN}

__all__ = ["MODELS", "MODEL_VALUES", "ArchitectureError", "build_model", "model_params", "register_model"]
