"""Architectures, registered by name (see ``models.registry``). Importing this package registers them all."""

from models.registry import MODELS, ArchitectureError, build_model, model_params, register_model
from models import convnet, report000, report001, report002, report003, report004, transfer  # noqa: F401  (registers)

__all__ = ["MODELS", "ArchitectureError", "build_model", "model_params", "register_model"]
