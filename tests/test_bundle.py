"""Models in and out of MLflow without pickle: weights and settings rebuilt with the registry's builders, a
pt2 serving flavour that takes any batch size, weights only where torch.export cannot, one-line refusals of
what does not fit, and a champion compared only on the same test set."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn as nn
from mlflow.tracking import MlflowClient

from models import MODELS, build_model
from models.layers import Normalized
from models.registry import ModelEntry
from tests.test_models import SHAPES
from tuner.bundle import (SETTINGS_FILE, WEIGHTS_FILE, describe, load_registered, model_id_of, read_bundle,
                          write_bundle)
from tuner.champion import Candidate, publish
from tuner.errors import UserError

EXAMPLE = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)   # two digits-sized images
DIGITS = {"model": "convnet", "dataset": "digits", "depth": 1, "width": 8, "fc": "16", "lr": 0.01, "seed": 0}


def wrapped(name: str, config: dict, shape, classes: int) -> Normalized:
    torch.manual_seed(0)
    net = build_model(name, config, shape, classes)
    return Normalized(net, [0.4] * shape[0], [0.3] * shape[0]).eval()


def bundle(tmp_path: Path, config: dict = DIGITS, shape=(1, 8, 8), classes: int = 10):
    model = wrapped(config["model"], config, shape, classes)
    settings = describe(model, config, shape, [str(i) for i in range(classes)])
    write_bundle(model, settings, tmp_path)
    return model, settings


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_comes_back_from_its_weights_and_settings(tmp_path, name):
    shape, classes = SHAPES["cifar10"]
    model, _ = bundle(tmp_path, {"model": name}, shape, classes)
    loaded, settings = read_bundle(tmp_path, "here")
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert settings["model"] == name and not loaded.training


def edit_settings(tmp_path: Path, **changes) -> None:
    path = tmp_path / SETTINGS_FILE
    settings = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "config":
            settings["config"].update(value)
        else:
            settings[key] = value
    path.write_text(json.dumps(settings))


@pytest.mark.parametrize("changes,expected", [
    ({"model": "evil_net"}, "its settings name the model 'evil_net', which is not registered here"),
    ({"model": ["convnet"]}, "its settings name the model \"['convnet']\", which is not registered here"),
    ({"config": {"model": "evil_net"}}, "its config is not the trial's settings of its model"),
    ({"config": {"width": 16}}, "its weights do not fit the convnet its settings describe (first: "),
    ({"config": {"lr": -1.0}}, "config.lr: -1.0 is out of range: lr must be > 0"),
    ({"config": {"depth": [1, 2]}}, "config.depth is not a plain value"),
    ({"input_shape": [1, 8]}, "its input_shape [1, 8] is not [channels, height, width]"),
    ({"num_classes": 11}, "its num_classes and classes do not agree"),
    ({"std": [0.0]}, "its std is not 1 finite numbers above 0"),
    ({"format": 2}, "is not a format-1 settings file"),
])
def test_settings_that_do_not_describe_the_weights_are_refused_in_one_line(tmp_path, changes, expected):
    bundle(tmp_path)
    edit_settings(tmp_path, **changes)
    with pytest.raises(UserError) as err:
        read_bundle(tmp_path, "models:/x@champion")
    message = str(err.value)
    assert message.startswith("models:/x@champion: ") and expected in message and "\n" not in message


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_weights_that_would_run_code_are_refused_and_run_nothing(tmp_path):
    bundle(tmp_path)
    marker = tmp_path / "ran"
    torch.save({"features.0.0.weight": RunsCode(marker)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(UserError, match="its weights.pt cannot be read as weights") as err:
        read_bundle(tmp_path, "here")
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_model_logged_as_a_pickle_is_not_loaded(tmp_path):
    bundle(tmp_path)
    (tmp_path / SETTINGS_FILE).unlink()
    with pytest.raises(UserError, match="has no tuner_model.json .*logged it as a pickle"):
        read_bundle(tmp_path, "here")


# ---- into and out of a store -------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment


def candidate(client, experiment, model: Normalized, config: dict, accuracy: float, rank: int = 1) -> Candidate:
    run = client.create_run(experiment, tags={"tuner.trial_id": f"t{rank}"})
    client.set_terminated(run.info.run_id)
    settings = describe(model, config, EXAMPLE.shape[1:], [str(i) for i in range(10)])
    return Candidate(rank, f"t{rank}", run.info.run_id, model, {"test_accuracy": accuracy, "test_loss": 1.0}, 0.5,
                     settings)


TAGS = {"search": "s", "dataset": "digits", "space": "d", "test_digest": "aa11", "test_images": 360}


def test_a_logged_model_serves_any_batch_size_and_loads_without_pickle(store, capfd):
    uri, client, experiment = store
    model = wrapped("convnet", DIGITS, (1, 8, 8), 10)
    done = publish(uri, [candidate(client, experiment, model, DIGITS, 0.8)], "d", EXAMPLE, 10, TAGS)
    assert done["alias"] == "champion" and done["note"] is None
    err = capfd.readouterr().err
    assert "pickle" not in err.lower()                             # MLflow's pickle warning is gone
    assert "registered model" not in err and "Created version" not in err     # the summary names the version
    loaded, settings, version = load_registered(MlflowClient(uri, registry_uri=uri), "models:/d@champion")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert version.tags["test_digest"] == "aa11" and version.tags["test_images"] == "360"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pyfunc.load_model("models:/d@champion")     # pt2, for serving: batches of 5, not the example's 2
    out = np.asarray(served.predict(x.numpy()))
    assert out.shape == (5, 10) and np.allclose(out, model(x).detach().numpy(), atol=1e-5)
    location = client.get_logged_model(model_id_of(version)).artifact_location
    assert {Path(f.path).name for f in mlflow.artifacts.list_artifacts(f"{location}/data")} == {"model.pt2"}


class BranchingNet(nn.Module):
    """A network whose forward pass branches on the data: torch.export cannot trace it."""

    def __init__(self, config, input_shape, num_classes):
        super().__init__()
        self.features = nn.Flatten()
        self.classifier = nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x) if x.mean() > 0 else -self.classifier(x)


def test_a_model_torch_export_cannot_export_is_logged_as_weights_and_settings(store, capsys, monkeypatch):
    uri, client, experiment = store
    monkeypatch.setitem(MODELS, "branching", ModelEntry("branching", BranchingNet, {}, "test only"))
    config = {"model": "branching"}
    model = wrapped("branching", config, (1, 8, 8), 10)
    done = publish(uri, [candidate(client, experiment, model, config, 0.5)], "b", EXAMPLE, 10, TAGS)
    assert "warning: branching cannot be exported for serving" in capsys.readouterr().err
    loaded, _, version = load_registered(client, "models:/b@champion")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert done["alias"] == "champion" and client.get_logged_model(model_id_of(version)).status == "READY"


def test_an_upload_that_fails_leaves_the_trials_run_as_it_ended(store, monkeypatch):
    uri, client, experiment = store
    model = wrapped("convnet", DIGITS, (1, 8, 8), 10)
    c = candidate(client, experiment, model, DIGITS, 0.8)
    ended = client.get_run(c.run_id).info

    def upload_fails(*args, **kwargs):
        raise OSError("the artifact store went away")

    monkeypatch.setattr(importlib.import_module("mlflow.pytorch"), "log_model", upload_fails)   # not the lazy stand-in
    with pytest.raises(OSError, match="the artifact store went away"):
        publish(uri, [c], "f", EXAMPLE, 10, TAGS)
    after = client.get_run(c.run_id).info
    assert (after.status, after.end_time) == ("FINISHED", ended.end_time)      # not FAILED, not ended again


def test_the_champion_is_compared_only_on_the_same_test_set(store):
    uri, client, experiment = store
    model = wrapped("convnet", DIGITS, (1, 8, 8), 10)

    def publish_one(accuracy, **tags):
        return publish(uri, [candidate(client, experiment, model, DIGITS, accuracy)], "d", EXAMPLE, 10,
                       {**TAGS, **tags})

    first = publish_one(0.80)
    assert first["alias"] == "champion"
    other = publish_one(0.99, test_digest="bb22")                   # better, on another test set
    assert other["alias"] == "challenger" and "was not scored on this test set" in other["note"]
    assert str(client.get_model_version_by_alias("d", "champion").version) == first["version"]
    worse = publish_one(0.70)
    assert worse["alias"] == "challenger" and "scored 0.8000 on the same test set and stays" in worse["note"]
    better = publish_one(0.90)
    assert better["alias"] == "champion"
    assert str(client.get_model_version_by_alias("d", "champion").version) == better["version"]
    client.delete_model_version_tag("d", better["version"], "test_digest")   # a champion of an older tuner
    assert publish_one(0.95)["alias"] == "challenger"


def test_a_resumed_transfer_search_starts_from_the_version_its_alias_named_at_first(store, tmp_path):
    from tuner.pretrained import resolve_pretrained
    from tuner.spaces import load_space

    uri, client, experiment = store
    first = wrapped("convnet", DIGITS, (1, 8, 8), 10)
    publish(uri, [candidate(client, experiment, first, DIGITS, 0.8)], "p", EXAMPLE, 10, TAGS)
    (tmp_path / "t.yaml").write_text('description: t\ndataset: digits\nmodel: convnet\n'
                                     'fixed: {pretrained: "models:/p@champion"}\n'
                                     'search:\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n')
    space = load_space(str(tmp_path / "t.yaml"))
    found = resolve_pretrained(space, {}, uri, False)
    assert found.pinned == "models:/p/1"
    torch.manual_seed(1)
    second = Normalized(build_model("convnet", DIGITS, (1, 8, 8), 10), [0.4], [0.3]).eval()
    publish(uri, [candidate(client, experiment, second, DIGITS, 0.9)], "p", EXAMPLE, 10, TAGS)
    client.set_registered_model_alias("p", "champion", "2")             # the alias moved on meanwhile
    assert resolve_pretrained(space, {}, uri, False).pinned == "models:/p/2"
    resumed = resolve_pretrained(space, {}, uri, False, pinned=found.pinned)
    assert resumed.pinned == "models:/p/1" and all(torch.equal(resumed.state[k], v) for k, v in found.state.items())


def test_a_search_concluded_again_names_the_model_it_registered_the_first_time(store):
    from types import SimpleNamespace

    from tuner.outcome import register
    from tuner.tracking import Tracking, TrialRuns

    uri, client, experiment = store
    parent = client.create_run(experiment, tags={"tuner.registered": "t1", "tuner.registered_uri": "models:/d@champion",
                                                 "tuner.registered_version": "3"}).info.run_id
    tracking = Tracking(uri, experiment, parent, TrialRuns(uri, experiment, parent, (1, 3, 3)))
    space = SimpleNamespace(multi_objective=False)
    registered, missed = register([("t1", None, None, None)], None, space, tracking, None, None, 1)
    assert missed == [] and registered["uri"] == "models:/d@champion" and registered["version"] == "3"
    assert client.search_model_versions() == []           # nothing registered again
