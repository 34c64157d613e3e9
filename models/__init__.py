"""Architectures, registered by name (see ``models.registry``). Importing this package registers them all."""

from models.registry import MODELS, ArchitectureError, build_model, model_params, register_model
from models import (  # noqa: F401  (importing registers them)
    convnet, fastnet, report000, report001, report002, report003, report004, transfer)

__all__ = ["MODELS", "ArchitectureError", "build_model", "model_params", "register_model"]
