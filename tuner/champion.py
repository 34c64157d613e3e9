"""The best models of a search, into MLflow: logged on their trial's run, registered, aliased.

Each logged model carries its weights and settings (``tuner.bundle``), which is what tuner itself loads,
and a serving flavour for MLflow's tools: ``pt2``, the network exported with ``torch.export`` (no pickle;
float32 images in [0, 1], shape (N, C, H, W) for any N, to logits). A network that ``torch.export`` cannot
export is logged with its weights and settings only, and a warning. The registered model is named after
the space; the best model becomes ``@champion`` unless the current champion is better on the same test set,
or was scored on another one (then the new model is ``@challenger`` and the champion stays). A
multi-objective search's Pareto front is logged and registered too, its versions aliased ``@pareto-1``,
``@pareto-2``, ... (``alias_front``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from models.layers import Normalized
from tuner.bundle import FOLDER, write_bundle
from tuner.console import DropLines

MODEL_NAME = "model"                       # the logged model's name on its trial's run
COMPARABLE = ("dataset", "test_digest", "test_images")   # tags that must agree for test scores to compare
ALIAS_RETRIES = 3
FRONT_ALIAS = "pareto-"   # pareto-1, pareto-2, ...: a multi-objective search's front, best first objective first


@dataclass
class Candidate:
    rank: int
    trial_id: str
    run_id: str                 # the trial's MLflow run
    model: Normalized
    test: dict                  # test_accuracy, test_loss
    val_score: float
    settings: dict              # tuner.bundle.describe: what rebuilds the network


def signature(input_shape, num_classes: int) -> ModelSignature:
    # -1: any batch size (a signature inferred from a one-image example would demand exactly one).
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


def requirements() -> list[str]:
    # Given outright: inferring them loads the model in a subprocess, seconds per model.
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def export_problem(model: Normalized, example: np.ndarray) -> str | None:
    """Why ``torch.export`` cannot export the model with a dynamic batch size (as MLflow's pt2 flavour
    exports it), or None. Tried first, so that a failure leaves nothing half-logged in the store."""
    from torch.export import Dim

    try:
        torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes=[{0: Dim.AUTO}])
    except Exception as exc:   # torch.export fails in many ways on code it cannot trace
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return None


# What MLflow prints (not logs) as it registers a model: the search's summary names the version.
REGISTRY_NOTICES = ("Successfully registered model", "Registered model '", "Created version '")


@contextlib.contextmanager
def without_registry_notices():
    stream = DropLines(sys.stderr, REGISTRY_NOTICES)
    with contextlib.redirect_stderr(stream):
        try:
            yield
        finally:
            stream.flush()


def log_pt2(c: Candidate, registry_name: str, example: np.ndarray, num_classes: int, files: list[str]) -> str:
    with mlflow.start_run(run_id=c.run_id), without_registry_notices():
        info = mlflow.pytorch.log_model(
            c.model, name=MODEL_NAME, signature=signature(example.shape[1:], num_classes), input_example=example,
            registered_model_name=registry_name, pip_requirements=requirements(), extra_files=files,
            metadata={"input": "float32 images in [0, 1], (N, C, H, W)", "tuner": f"{FOLDER}/"},
            serialization_format="pt2")
    return str(info.registered_model_version)


def log_weights_only(c: Candidate, registry_name: str, folder: Path, client: MlflowClient) -> str:
    """A logged model of the two files alone (no serving flavour), registered like the others."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    experiment_id = client.get_run(c.run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=c.run_id,
                                        tags={"tuner.serving": "none: torch.export could not export it"})
    client.log_model_artifacts(logged.model_id, str(folder), artifact_path=FOLDER)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(c.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    try:
        client.create_registered_model(registry_name)
    except MlflowException:
        pass   # registered by an earlier search
    return str(client.create_model_version(registry_name, f"models:/{logged.model_id}", run_id=c.run_id,
                                           model_id=logged.model_id).version)


def log_candidate(c: Candidate, registry_name: str, example: np.ndarray, num_classes: int, tags: dict,
                  client: MlflowClient) -> str:
    """Log one model on its trial's run and register it; returns the new version."""
    ended = client.get_run(c.run_id).info
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-bundle-") as tmp:
            folder = Path(tmp, FOLDER)
            files = write_bundle(c.model, c.settings, folder)
            problem = export_problem(c.model, example)
            if problem is None:
                version = log_pt2(c, registry_name, example, num_classes, files)
            else:
                print(f"warning: {c.settings['model']} cannot be exported for serving ({problem}); its weights "
                      f"and settings are logged without a serving flavour", file=sys.stderr)
                version = log_weights_only(c, registry_name, folder, client)
    finally:
        # Reopening the run to log into it must not change how and when the trial ended, even when the upload
        # failed (MLflow ends a run whose block raised as FAILED).
        client.set_terminated(c.run_id, status=ended.status, end_time=ended.end_time)
    for key, value in {**tags, "rank": c.rank, "trial_id": c.trial_id, **c.test}.items():
        client.set_model_version_tag(registry_name, version, key, str(value))
    return version


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def decide(champion, ours: float, tags: dict) -> tuple[str, str | None]:
    """(the alias the new model gets, why the champion stays or None)."""
    if champion is None:
        return "champion", None
    theirs = champion.tags
    if any(theirs.get(k) != str(tags.get(k)) for k in COMPARABLE) or "test_accuracy" not in theirs:
        return "challenger", (f"the champion (version {champion.version}) was not scored on this test set "
                              f"(dataset, test-set digest or size differ or are missing) and stays; compare them "
                              f"on one test set before moving the alias")
    if float(theirs["test_accuracy"]) > ours:
        return "challenger", (f"the champion (version {champion.version}) scored {float(theirs['test_accuracy']):.4f} "
                              f"on the same test set and stays")
    return "champion", None


def set_alias(client: MlflowClient, name: str, version: str, ours: float, tags: dict) -> tuple[str, str | None]:
    """Compare with the champion, re-read the alias just before moving it, and compare again if another
    search moved it meanwhile. MLflow has no compare-and-set: a move between that last read and ours is
    still possible (README: the remaining race)."""
    for _ in range(ALIAS_RETRIES):
        champion = current_champion(client, name)
        alias, why = decide(champion, ours, tags)
        now = current_champion(client, name)
        if (now and now.version) == (champion and champion.version):
            break
    client.set_registered_model_alias(name, alias, version)
    return alias, why


def publish(uri: str, candidates: list[Candidate], registry_name: str, example: np.ndarray, num_classes: int,
            tags: dict) -> dict:
    """Log and register every candidate (best first) in the store at ``uri``; alias the best. Returns what
    was done."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # MLflow copies extra files with one
    # log_model registers through the process-wide URIs; the client names its own.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    versions = [log_candidate(c, registry_name, example, num_classes, tags, client) for c in candidates]
    best, version = candidates[0], versions[0]
    alias, why = set_alias(client, registry_name, version, best.test["test_accuracy"], tags)
    return {"name": registry_name, "versions": versions, "alias": alias, "version": version,
            "uri": f"models:/{registry_name}@{alias}", "note": why}


def alias_front(uri: str, registry_name: str, aliases: dict[str, str]) -> dict[str, str]:
    """Point ``pareto-1``, ``pareto-2``, ... at the versions of a multi-objective search's Pareto front (pareto-1:
    the best first objective), and drop the ``pareto-K`` aliases an earlier, larger front left behind: these
    aliases always name one search's front. Returns alias -> version."""
    client = MlflowClient(uri, registry_uri=uri)
    stale = [a for a in client.get_registered_model(registry_name).aliases if a.startswith(FRONT_ALIAS)]
    for alias in stale:
        if alias not in aliases:
            client.delete_registered_model_alias(registry_name, alias)
    for alias, version in aliases.items():
        client.set_registered_model_alias(registry_name, alias, version)
    return aliases
