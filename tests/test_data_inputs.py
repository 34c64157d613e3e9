"""The data of a search in MLflow's dataset tracking, against the sqlite store: the search's run and each
trial's run carry the training and validation splits with their sizes, and a digest that tells splits,
subsets and changed images apart."""

from __future__ import annotations

import dataclasses
import json

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from tuner.data import load_part, prepare_trial_data
from tuner.data_inputs import held_out_input, split_inputs
from tuner.tracking import TrialRuns, log_datasets


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('datasets') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("datasets")


def logged(client: MlflowClient, run_id: str) -> dict[str, dict]:
    """context -> what the run's dataset input says (name, digest, source, profile)."""
    out = {}
    for inp in client.get_run(run_id).inputs.dataset_inputs:
        context = {t.key: t.value for t in inp.tags}["mlflow.data.context"]
        ds = inp.dataset
        out[context] = {"name": ds.name, "digest": ds.digest, "source_type": ds.source_type,
                        "profile": json.loads(ds.profile)}
    return out


def test_a_run_carries_its_splits_and_another_split_has_another_digest(store):
    _, client, experiment = store
    runs = {}
    for seed in (0, 1, 0):
        data = prepare_trial_data("digits", None, 0.2, seed)
        run_id = client.create_run(experiment).info.run_id
        log_datasets(client, run_id, split_inputs(data, None))
        runs.setdefault(seed, []).append((run_id, data))
    first, again = (logged(client, run_id) for run_id, _ in runs[0])
    other = logged(client, runs[1][0][0])
    data = runs[0][0][1]
    assert set(first) == {"train", "validation"} and first["train"]["name"] == "digits"
    assert first["train"]["profile"]["features_shape"] == [len(data.train_idx), 1, 8, 8]
    assert first["validation"]["profile"]["targets_shape"] == [len(data.val_idx)]
    assert first["train"]["source_type"] == "code"                        # embedded in scikit-learn
    assert first == again                                                 # the same split: the same dataset
    assert other["train"]["digest"] != first["train"]["digest"]           # another seed: another split
    assert other["validation"]["digest"] != first["validation"]["digest"]
    assert first["train"]["digest"] != first["validation"]["digest"]


def test_the_digest_changes_with_the_images_and_with_a_subset():
    data = prepare_trial_data("digits", None, 0.2, 0)
    digest = split_inputs(data, None)[0].dataset.digest
    changed = data.images.copy()
    changed[data.train_idx[0], 0, 0, 0] ^= 1                               # one pixel of one training image
    assert split_inputs(dataclasses.replace(data, images=changed), None)[0].dataset.digest != digest
    smoke = prepare_trial_data("digits", None, 0.2, 0, limit=256)          # --smoke's subset
    assert split_inputs(smoke, None)[0].dataset.digest != digest


def test_files_read_from_a_folder_name_it_as_their_source(store, data_dir):
    _, client, experiment = store
    data = prepare_trial_data("mnist", data_dir, 0.1, 0, limit=512)
    run_id = client.create_run(experiment).info.run_id
    log_datasets(client, run_id, [*split_inputs(data, data_dir), held_out_input("mnist", load_part(
        "mnist", data_dir, "test"), data_dir)])
    runs = client.get_run(run_id).inputs.dataset_inputs
    sources = {json.loads(i.dataset.source)["uri"] for i in runs}
    assert {i.dataset.source_type for i in runs} == {"local"} and sources == {str(data_dir / "MNIST" / "raw")}
    assert logged(client, run_id)["test"]["profile"]["features_shape"] == [10000, 1, 28, 28]


def test_each_trial_run_is_created_with_the_searchs_splits(store):
    uri, client, experiment = store
    data = prepare_trial_data("digits", None, 0.2, 0)
    parent = client.create_run(experiment).info.run_id
    callback = TrialRuns(uri, experiment, parent, (2, 3, 20), split_inputs(data, None))
    trial = Trial("train_trial", config={"lr": 0.01}, trial_id="t0001", stub=True)
    run_id = callback.run_id(trial)
    assert run_id and not callback.mlflow.missed
    assert logged(client, run_id)["train"]["digest"] == split_inputs(data, None)[0].dataset.digest
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent
