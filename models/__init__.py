"""Architectures, registered by name (see ``models.registry``). Importing this package registers them all."""

from models.registry import MODELS, ArchitectureError, build_model, model_params, register_model
from models import convnet, report003  # noqa: F401  (importing registers them)

__all__ = ["MODELS", "ArchitectureError", "build_model", "model_params", "register_model"]
