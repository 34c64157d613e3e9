"""The best models of a search, into MLflow: logged on their trial's run, registered, aliased.

Each logged model is ``models.layers.Normalized``: it takes float32 images in [0, 1], shape (N, C, H, W)
for any N, and returns logits. The ``models`` package travels inside the logged model (``code_paths``),
so it loads where tuner is not installed. The registered model is named after the space; the best model
becomes version ``@champion`` unless the current champion scored higher on the same test set, in which
case the new one is ``@challenger``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

import models
from models.layers import Normalized



@dataclass
class Candidate:
    rank: int
    trial_id: str
    run_id: str                 # the trial's MLflow run
    model: Normalized
    test: dict                  # test_accuracy, test_loss
    val_score: float


def signature(input_shape, num_classes: int) -> ModelSignature:
    # -1: any batch size (a signature inferred from a one-image example would demand exactly one).
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


def requirements() -> list[str]:
    import cloudpickle
    import torchvision

    # Given outright: inferring them loads the model in a subprocess, seconds per model.
    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}", f"cloudpickle=={cloudpickle.__version__}"]


def log_candidate(c: Candidate, registry_name: str, example: np.ndarray, num_classes: int, tags: dict,
                  client: MlflowClient) -> str:
    """Log one model on its trial's run and register it; returns the new version."""
    ended = client.get_run(c.run_id).info
    with mlflow.start_run(run_id=c.run_id):
        info = mlflow.pytorch.log_model(
            c.model, name="model", signature=signature(example.shape[1:], num_classes), input_example=example,
            registered_model_name=registry_name, code_paths=[str(Path(models.__file__).parent)],
            pip_requirements=requirements(), metadata={"input": "float32 images in [0, 1], (N, C, H, W)"},
            serialization_format="pickle")  # keeps the nn.Module and its layers (pt2 export flattens them)
    # Reopening the run to log into it must not change when the trial ended.
    client.set_terminated(c.run_id, status=ended.status, end_time=ended.end_time)
    version = str(info.registered_model_version)
    for key, value in {**tags, "rank": c.rank, "trial_id": c.trial_id, **c.test}.items():
        client.set_model_version_tag(registry_name, version, key, str(value))
    return version


def current_champion_accuracy(client: MlflowClient, name: str, dataset: str) -> float | None:
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    if mv.tags.get("dataset") != dataset or "test_accuracy" not in mv.tags:
        return None
    return float(mv.tags["test_accuracy"])


def publish(uri: str, candidates: list[Candidate], registry_name: str, example: np.ndarray, num_classes: int,
            tags: dict) -> dict:
    """Log and register every candidate (best first) in the store at ``uri``; alias the best. Returns what
    was done."""
    # log_model registers through the process-wide URIs; the client names its own.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    versions = [log_candidate(c, registry_name, example, num_classes, tags, client) for c in candidates]
    best, version = candidates[0], versions[0]
    previous = current_champion_accuracy(client, registry_name, tags.get("dataset", ""))
    alias = "champion"
    if previous is not None and previous > best.test["test_accuracy"]:
        alias = "challenger"    # keep the better champion of an earlier search
    client.set_registered_model_alias(registry_name, alias, version)
    return {"name": registry_name, "versions": versions, "alias": alias, "version": version,
            "uri": f"models:/{registry_name}@{alias}", "previous_champion_test_accuracy": previous}
