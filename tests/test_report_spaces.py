"""The reports' spaces end to end.

Every shipped space whose data is local trains a trial for an epoch of 128 images, on its dataset, with the
settings a smoke search tries first (the path of a ``--smoke`` trial at an eighth of its size); the transfer
spaces start from weights of a model trained here first (no ImageNet weights here). Two real searches: a
CIFAR-10 search registers its champion, and a second search transfers from it, with the report's figures
beside its own. And ``--smoke`` through Ray for a transfer space with a torchvision backbone.
"""

from __future__ import annotations

import shutil

import mlflow
import pandas as pd
import pytest
import torch
from ray.tune.search.sample import Domain

from models import ArchitectureError, build_model
from tests.conftest import search_args
from tests.test_models import SHAPES
from tuner.bundle import load_registered
from tuner.data import prepare_trial_data
from tuner.pretrained import from_file, resolve_pretrained
from tuner.run import main
from tuner.search import SMOKE
from tuner.spaces import SPACES_DIR, load_space
from tuner.trial import TrialState, run_trial

pytestmark = pytest.mark.slow

FOLDERS = {"digits": None, "mnist": ".", "cifar10": "cifar-10-subset"}   # where the local data is, per dataset
LOCAL = sorted(p.stem for p in SPACES_DIR.glob("*.yaml") if load_space(p.stem).dataset in FOLDERS)
SMALL_INPUT = {"resnet18": 32, "alexnet": 64, "vgg16": 32}   # the smallest input each backbone takes: CPU seconds


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One Ray results folder and MLflow store for the searches of this module."""
    return tmp_path_factory.mktemp("report_spaces")


@pytest.fixture(scope="module")
def trained_weights(store):
    """model -> a checkpoint folder of that model trained for one step on 64 digits."""
    data, folders = prepare_trial_data("digits", None, 0.2, 0, limit=64), {}

    def get(model: str):
        if model not in folders:
            keep = store / f"weights_{model}"
            save = lambda metrics, folder: folder and shutil.copytree(folder, keep, dirs_exist_ok=True)  # noqa: E731
            run_trial({"model": model, "max_epochs": 1, "batch_size": 64, "input_size": SMALL_INPUT[model]}, data, save)
            folders[model] = keep
        return folders[model]

    return get


@pytest.fixture(scope="module")
def small_data(data_dir):
    """dataset -> 128 training images of it (a smoke search takes 1,024)."""
    cache = {}

    def get(name: str, val_fraction: float):
        if name not in cache:
            folder = data_dir / FOLDERS[name] if FOLDERS[name] else None
            cache[name] = prepare_trial_data(name, folder, val_fraction, 0, limit=SMOKE["train_images"] // 8)
        return cache[name]

    return get


def first_trial(space, overrides: dict) -> dict:
    """The config a smoke search of ``space`` runs first: its first start point, else the first seeded draw
    whose network fits the input (a space may allow some that do not: the search records those)."""
    start = space.start[0] if space.start else {}
    config = {**space.param_space(), **start, **overrides, "max_epochs": 1, "seed": 0}
    for seed in range(20):
        drawn = {k: v.sample(random_state=seed) if isinstance(v, Domain) else v for k, v in config.items()}
        try:
            build_model(space.model, drawn, *SHAPES[space.dataset])
            return drawn
        except ArchitectureError:
            continue
    raise AssertionError(f"no config of {space.name} fits its input")


def transfer_overrides(space, trained_weights) -> dict:
    """Weights trained here for spaces that default to ImageNet's, and the backbone's smallest input size."""
    out = {}
    if space.fixed.get("pretrained") == "imagenet":
        out["pretrained"] = str(trained_weights(space.model))
    if "input_size" in space.search:
        out["input_size"] = SMALL_INPUT[space.model]
    return out


@pytest.mark.parametrize("name", LOCAL)
def test_every_space_with_local_data_trains_a_trial(name, small_data, trained_weights):
    space = load_space(name)
    overrides = transfer_overrides(space, trained_weights)
    config = first_trial(space, overrides)
    weights = from_file(config["pretrained"]) if config.get("pretrained", "none") != "none" else None
    results = []
    run_trial(config, small_data(space.dataset, space.val_fraction), lambda m, folder: results.append(m),
              pretrained=weights)
    assert [r["end_reason"] for r in results] == ["completed"], results
    assert 0 <= results[0]["val_accuracy"] <= 1 and results[0]["train_loss"] > 0


def smoke(store, data_dir, name: str, *extra: str, label: str = "") -> pd.DataFrame:
    space = load_space(name)
    folder = FOLDERS[space.dataset]
    label = label or f"smoke-{space.name}"
    args = ["--space", name, "--smoke", "--name", label, *extra]
    args += ["--data-dir", str(data_dir / folder)] if folder else []
    assert main(search_args(store, *args)) == 0
    return pd.read_csv(store / "ray_results" / label / "leaderboard.csv")


def test_transfer_from_the_champion_of_an_earlier_search(ray_session, data_dir, store, tmp_path, capsys):
    smoke(store, data_dir, "cifar_lrn")                       # registers cifar_lrn@champion in the store
    # cifar100_transfer's study, on the CIFAR-10 images that are here
    text = (SPACES_DIR / "cifar100_transfer.yaml").read_text().replace("dataset: cifar100", "dataset: cifar10")
    (tmp_path / "transfer.yaml").write_text(text)
    space = load_space(str(tmp_path / "transfer.yaml"))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    found = resolve_pretrained(space, {}, uri, False)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    source = client.get_run(client.get_model_version_by_alias("cifar_lrn", "champion").run_id).data.params
    assert found.settings == {"pool": source["pool"], "lrn": source["lrn"]}   # the champion's architecture
    champion = load_registered(client, "models:/cifar_lrn@champion")[0].model
    assert champion.state_dict().keys() == found.state.keys()
    assert all(torch.equal(found.state[k], v) for k, v in champion.state_dict().items())
    data = prepare_trial_data("cifar10", data_dir / "cifar-10-subset", 0.1, 0, limit=256)
    trial = TrialState({"model": "report002_cnn", **found.settings, "refine_start_step": "never"}, data,
                       torch.device("cpu"), found.state)
    assert all(torch.equal(trial.model.features.state_dict()[k], v) for k, v in champion.features.state_dict().items())

    capsys.readouterr()
    board = smoke(store, data_dir, str(tmp_path / "transfer.yaml"))
    printed = capsys.readouterr().out
    assert f"pretrained: {len(found.state)} tensors from models:/cifar_lrn@champion" in printed
    assert (board["end_reason"] == "completed").all()
    # The start point is the report's best setting: its figure stands beside the trial's own.
    reported = (board["head_lr"] == 0.005) & (board["refine_start_step"].astype(str) == "never")
    assert reported.any() and (board.loc[reported, "report_test_accuracy"] == 0.597).all()
    assert board.loc[~reported, "report_test_accuracy"].isna().all()
    assert "Report's best: test_accuracy 0.5970 (head_lr=0.005, refine_start_step=never; report 002" in printed
    assert "This search's best: test_accuracy" in printed


# Through Ray, besides the searches above and the quickstart, mnist_filters_strides and multi-objective ones of
# other modules: a torchvision backbone from a weights folder at its smallest input. Every other space's
# path through Ray is the same as theirs; what differs per space is its trial (above, every space) and its
# searcher's draws (tests/test_spaces.py, every space).
def test_smoke_search_of_a_transfer_space_with_a_torchvision_backbone(ray_session, data_dir, store, trained_weights):
    space = load_space("cifar_resnet_transfer")
    extra = [f"--set={k}={v}" for k, v in transfer_overrides(space, trained_weights).items()]
    board = smoke(store, data_dir, space.name, *extra)
    assert len(board) == 2 and (board["end_reason"] == "completed").any()
