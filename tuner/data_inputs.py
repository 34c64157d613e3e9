"""The data a search ran on, as MLflow dataset inputs (the UI's Dataset column).

The search's run and every trial's run carry the training and the validation split (context tags
``train`` and ``validation``); the search's run also carries the test set it scores the best trial on.
Each is named after the dataset, records where it was read from, its size and image shape (the profile),
and a digest of exactly its images and labels: another dataset, another split (seed, val_fraction,
``--smoke``) or changed files give another digest, so runs on different data are not compared by mistake.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.numpy_dataset import from_numpy
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from tuner.data import ImageSet, TrialData, where_read


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """16 hex digits of the images (with their shape) and labels, in order."""
    h = hashlib.blake2b(str(images.shape).encode(), digest_size=8)
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def dataset_input(name: str, images: np.ndarray, labels: np.ndarray, source: str, context: str) -> DatasetInput:
    """One split as MLflow's NumPy dataset: the profile (sizes, shapes) and schema are MLflow's own."""
    origin = get_dataset_source_from_json(json.dumps({"uri": source}), "local") if Path(source).is_dir() else \
        CodeDatasetSource({"mlflow.source.name": source})
    dataset = from_numpy(images, source=origin, targets=labels, name=name, digest=content_digest(images, labels))
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def split_inputs(data: TrialData, data_dir: Path | None) -> list[DatasetInput]:
    """The training and validation splits the trials see."""
    source = where_read(data.name, data_dir, "train")
    return [dataset_input(data.name, data.images[idx], data.labels[idx], source, context)
            for context, idx in (("train", data.train_idx), ("validation", data.val_idx))]


def held_out_input(name: str, test_set: ImageSet, data_dir: Path | None) -> DatasetInput:
    return dataset_input(name, test_set.images, test_set.labels, where_read(name, data_dir, "test"), "test")
