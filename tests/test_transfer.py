"""Transfer inside a trial: the backbone frozen until the refine step (also across a resume), the last k
layers, the head's learning rate, weight decay on named layers, and pretrained weights that fit or not."""

from __future__ import annotations

import pytest
import torch

from models import ArchitectureError, build_model
from models.transfer import torchvision_state_dict
from tests.test_models import SHAPES
from tuner.data import prepare_trial_data
from tuner.errors import UserError
from tuner.pretrained import _typed, from_file, imagenet_weights, resolve_pretrained, source_settings
from tuner.spaces import SPACES_DIR, load_space
from tuner.train import TrainConfig
from tuner.transfer import check_decay_names, load_pretrained, optimizer_groups, own_params, prepare, split_backbone
from tuner.trial import TrialState, device_data

CPU = torch.device("cpu")
CONFIG = {"model": "convnet", "dataset": "digits", "depth": 2, "width": 8, "fc": "16", "lr": 0.01,
          "batch_size": 64, "max_epochs": 3, "seed": 0}


@pytest.fixture(scope="module")
def digits():
    return prepare_trial_data("digits", None, 0.2, 0, limit=128)   # 128 images: an epoch is two steps of 64


def part(model, prefix: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith(prefix)]


def copies(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def same(before, params) -> list[bool]:
    return [torch.equal(b, p) for b, p in zip(before, params)]


def epoch(state: TrialState, data) -> None:
    state.trainer(device_data(data, CPU)).epoch()


# ---- refine_start_step -------------------------------------------------------------------------------------

def test_the_backbone_is_frozen_until_the_refine_step_then_trains(digits):
    # adamw decays decoupled from the gradient: a frozen weight that were decayed would change too.
    state = TrialState({**CONFIG, "refine_start_step": 2, "optimizer": "adamw", "weight_decay": 0.1}, digits, CPU)
    backbone, head = copies(part(state.model, "features")), copies(part(state.model, "classifier"))
    epoch(state, digits)                                      # steps 0 and 1
    assert state.schedule.last_epoch == 2
    assert all(same(backbone, part(state.model, "features")))
    assert all(p.grad is None for p in part(state.model, "features"))
    assert not any(same(head, part(state.model, "classifier")))
    epoch(state, digits)                                      # steps 2 and 3: the backbone trains
    assert not any(same(backbone, part(state.model, "features")))


def test_never_keeps_the_backbone_frozen(digits):
    state = TrialState({**CONFIG, "refine_start_step": "never"}, digits, CPU)
    backbone, head = copies(part(state.model, "features")), copies(part(state.model, "classifier"))
    for _ in range(3):
        epoch(state, digits)
    assert all(same(backbone, part(state.model, "features")))
    assert not any(same(head, part(state.model, "classifier")))


def test_a_resumed_trial_thaws_at_the_same_step(tmp_path, digits):
    config = {**CONFIG, "refine_start_step": 3}
    first = TrialState(config, digits, CPU)
    epoch(first, digits)                                      # steps 0, 1
    first.save(str(tmp_path))
    resumed = TrialState(config, digits, CPU)
    resumed.load(tmp_path)
    assert resumed.schedule.last_epoch == 2
    backbone = copies(part(resumed.model, "features"))
    epoch(resumed, digits)                                    # step 2 frozen, step 3 trains (not 0 and 1 again)
    assert not any(same(backbone, part(resumed.model, "features")))


@pytest.mark.parametrize("value", [-1, "sometimes", 1.5])
def test_a_bad_refine_start_step_is_an_architecture_error(digits, value):
    with pytest.raises(ArchitectureError, match="refine_start_step must be a whole number >= 0 or 'never'"):
        TrialState({**CONFIG, "refine_start_step": value}, digits, CPU)


def test_a_trial_told_of_weights_it_did_not_get_does_not_train_from_scratch(digits):
    with pytest.raises(ArchitectureError, match="pretrained 'w.pt' reached this trial without its weights"):
        TrialState({**CONFIG, "pretrained": "w.pt"}, digits, CPU)


# ---- trainable_layers, head_lr -----------------------------------------------------------------------------

def test_the_last_five_layers_of_resnet18_are_its_last_block():
    net = build_model("resnet18", {}, (3, 32, 32), 10)
    fixed, trainable = (own_params(modules) for modules in split_backbone(net, 5))
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in trainable} == {"layer4"}
    assert len(fixed) + len(trainable) == len(part(net, "features"))
    convs = [m for n, m in net.named_modules() if n.startswith("features.layer4") and isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and {id(p) for m in convs for p in m.parameters()} <= {id(p) for p in trainable}
    assert split_backbone(net, "all")[0] == [] and split_backbone(net, 0)[1] == []


def running_stats(model, prefix: str) -> list[torch.Tensor]:
    return [b.detach().clone() for n, b in model.named_buffers() if n.startswith(prefix) and "running_" in n]


@pytest.mark.parametrize("settings,frozen,trains", [
    ({"refine_start_step": "never"}, "features", "classifier"),
    ({"trainable_layers": 5}, "features.layer1", "features.layer4"),
])
def test_frozen_batch_norms_keep_their_running_statistics_if_asked(digits, settings, frozen, trains):
    """With freeze_batch_norm a frozen layer's batch norm normalises with its running statistics and leaves
    them as they are (as Keras's frozen BatchNormalization)."""
    state = TrialState({**CONFIG, "model": "resnet18", "freeze_batch_norm": True, **settings}, digits, CPU)
    held, free = running_stats(state.model, frozen), running_stats(state.model, "features.layer4")
    assert held
    for _ in range(2):                                       # each epoch starts in training mode
        epoch(state, digits)
    assert all(same(held, running_stats(state.model, frozen)))
    if trains == "features.layer4":
        assert not any(same(free, running_stats(state.model, trains)))     # the layers that train do update


def test_frozen_batch_norms_follow_the_new_data_by_default(digits):
    state = TrialState({**CONFIG, "model": "resnet18", "refine_start_step": "never"}, digits, CPU)
    before = running_stats(state.model, "features")
    epoch(state, digits)
    assert not any(same(before, running_stats(state.model, "features")))


def test_held_batch_norms_thaw_with_the_backbone(digits):
    state = TrialState({**CONFIG, "model": "resnet18", "refine_start_step": 2, "freeze_batch_norm": True}, digits,
                       CPU)
    before = running_stats(state.model, "features")
    epoch(state, digits)                                      # steps 0 and 1: frozen
    assert all(same(before, running_stats(state.model, "features")))
    epoch(state, digits)                                      # steps 2 and 3: the backbone trains
    assert not any(same(before, running_stats(state.model, "features")))


def test_weights_without_batch_norm_step_counts_still_fit():
    """ImageNet's ResNet files were saved before batch norms counted their steps."""
    net = build_model("resnet18", {}, (3, 32, 32), 10)
    source = {k: v for k, v in build_model("resnet18", {}, (3, 32, 32), 10).state_dict().items()
              if not k.endswith("num_batches_tracked")}
    loaded = load_pretrained(net, source)
    assert len(loaded["loaded"]) == len(source) and all(k.endswith("num_batches_tracked") or
                                                        k.startswith("classifier") for k in loaded["new"])


def test_trainable_layers_leaves_the_rest_unchanged(digits):
    state = TrialState({**CONFIG, "model": "resnet18", "trainable_layers": 5}, digits, CPU)
    rest, last = copies(part(state.model, "features.layer1")), copies(part(state.model, "features.layer4"))
    epoch(state, digits)
    assert all(same(rest, part(state.model, "features.layer1")))
    assert all(p.grad is None and not p.requires_grad for p in part(state.model, "features.layer1"))
    assert not any(same(last, part(state.model, "features.layer4")))


def test_the_head_has_its_own_learning_rate(digits):
    state = TrialState({**CONFIG, "head_lr": 0.1, "weight_decay": 0.001}, digits, CPU)
    head = {id(p) for p in part(state.model, "classifier")}
    groups = state.optimizer.param_groups
    assert sorted(len(g["params"]) for g in groups) == sorted(len(g["params"]) for g in groups if g["params"])
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in state.model.parameters())       # each parameter once
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= head or not ids & head
        assert g["lr"] == (0.1 if ids <= head else 0.01)


# ---- weight decay on named layers --------------------------------------------------------------------------

@pytest.mark.parametrize("model,shape,which,layers", [
    ("report003_cifar", (3, 32, 32), "features.conv1,features.conv3,classifier.fc1",
     {"features.conv1", "features.conv3", "classifier.fc1"}),
    ("report000_cnn", (3, 32, 32), "fc", {"classifier.fc1", "classifier.fc2", "classifier.out"}),
    ("report004_model1", (3, 32, 32), "conv", {f"features.conv{i}" for i in range(1, 6)}),
    ("report002_cnn", (3, 32, 32), "features.conv3,classifier.out", {"features.conv3", "classifier.out"}),
    ("report001_mlp", (1, 28, 28), "features.fc1", {"features.fc1"}),
    ("resnet18", (3, 32, 32), "features.layer4.1", {"features.layer4.1.conv1", "features.layer4.1.conv2"}),
    ("alexnet", (3, 32, 32), "features.10,classifier", {"features.10", "classifier.out"}),
    ("report004_lenet", (3, 32, 32), "none", set()),
    ("report000_cnn", (3, 32, 32), "conv,classifier.fc1",        # a kind in a list is still the kind
     {"features.conv1", "features.conv2", "classifier.fc1"}),
    ("report000_cnn", (3, 32, 32), "conv,fc", {"features.conv1", "features.conv2", "classifier.fc1",
                                                "classifier.fc2", "classifier.out"}),
])
def test_weight_decay_reaches_exactly_the_named_layers(model, shape, which, layers):
    net = build_model(model, {}, shape, 10)
    groups = optimizer_groups(net, TrainConfig(weight_decay=0.01, weight_decay_on=which), prepare(net, {}, None))
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    modules = dict(net.named_modules())
    assert decayed == {id(modules[name].weight) for name in layers}


def test_a_layer_name_that_names_nothing_is_an_architecture_error():
    net = build_model("report003_cifar", {}, (3, 32, 32), 10)
    with pytest.raises(ArchitectureError, match="'features.conv9' names no conv or linear layer; .*features.conv1"):
        check_decay_names(net, "features.conv1,features.conv9")


@pytest.mark.parametrize("name", sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
def test_every_shipped_space_names_layers_its_model_has(name):
    space = load_space(name)
    values = [space.fixed.get("weight_decay_on", "all")]
    kind, args = space.search.get("weight_decay_on", ("choice", []))
    values += args
    net = build_model(space.model, space.fixed, *SHAPES[space.dataset])
    for which in values:
        check_decay_names(net, which)
        groups = optimizer_groups(net, TrainConfig(weight_decay=0.01, weight_decay_on=which), prepare(net, {}, None))
        assert (len(groups) == 1) == (which == "none")


# ---- pretrained weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg16"])
def test_torchvision_weights_load_into_the_backbone(name):
    import torchvision

    theirs = getattr(torchvision.models, name)(weights=None).state_dict()   # same layout as the ImageNet file
    net = build_model(name, {}, (3, 32, 32), 10)
    done = load_pretrained(net, torchvision_state_dict(name, theirs))
    assert done["new"] and all(k.startswith("classifier.") for k in done["new"])
    ours = net.state_dict()
    for key, value in torchvision_state_dict(name, theirs).items():
        assert torch.equal(ours[key], value)


def test_weights_of_another_architecture_do_not_fit():
    source = build_model("convnet", {"width": 8}, (3, 32, 32), 10).state_dict()
    with pytest.raises(ArchitectureError, match="do not fit .*first: features.0.0.weight"):
        load_pretrained(build_model("convnet", {"width": 16}, (3, 32, 32), 10), source)


def test_a_new_head_for_more_classes(digits):
    source = build_model("report002_cnn", {}, (3, 32, 32), 10)
    net = build_model("report002_cnn", {}, (3, 32, 32), 100)
    done = load_pretrained(net, source.state_dict())
    assert done["new"] == ["classifier.out.bias", "classifier.out.weight"]
    assert torch.equal(net.features.conv3.weight, source.features.conv3.weight)


def test_weight_files_and_their_one_line_errors(tmp_path, monkeypatch):
    net = build_model("report002_cnn", {}, (3, 32, 32), 10)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    state = from_file(str(tmp_path / "w.pt"))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    (tmp_path / "ckpt").mkdir()
    torch.save(net.state_dict(), tmp_path / "ckpt" / "model.pt")
    assert set(from_file(str(tmp_path / "ckpt"))) == set(state)                  # a trial checkpoint folder
    best = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(best, tmp_path / "ckpt" / "best_model.pt")                         # ... with its best epoch's
    assert all(torch.equal(from_file(str(tmp_path / "ckpt"))[k], v) for k, v in best.items())
    (tmp_path / "notes.txt").write_text("not weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))                     # an empty torch cache
    for call, message in ((lambda: from_file(str(tmp_path / "nope.pt")), "is not a weights file"),
                          (lambda: from_file(str(tmp_path / "notes.txt")), "cannot read"),
                          (lambda: imagenet_weights("vgg16", False), "add --download"),
                          (lambda: imagenet_weights("report002_cnn", False), "ImageNet weights for resnet18")):
        with pytest.raises(UserError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_imagenet_weights_are_downloaded_as_tensors_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))                     # not cached: downloaded
    asked = {}

    def fetch(url, *args, **kwargs):      # torch.hub.load_state_dict_from_url, as torchvision calls it
        asked.update(kwargs)
        return torchvision.models.resnet18().state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fetch)
    assert imagenet_weights("resnet18", True)
    assert asked.get("weights_only") is True and asked.get("check_hash") is True


def test_weights_are_not_searched_and_come_from_the_same_model(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("description: d\ndataset: cifar10\nmodel: report002_cnn\n"
                    "search:\n  pretrained: {choice: [none, imagenet]}\n")
    with pytest.raises(UserError, match="search.pretrained: weights cannot be searched"):
        resolve_pretrained(load_space(str(path)), {}, "sqlite:///unused.db", False)
    space = load_space("cifar100_transfer")
    with pytest.raises(UserError, match="is a convnet, but cifar100_transfer builds report002_cnn"):
        source_settings({"model": "convnet"}, space, {}, "models:/x@champion")
    # the source trial's settings of the model, typed, for what the space leaves open
    assert source_settings({"model": "report002_cnn", "pool": "caffe", "lrn": "within", "lr": "0.1"}, space, {},
                           "models:/x@champion") == {"pool": "caffe", "lrn": "within"}
    assert _typed("128", (str,)) == "128" and _typed("3", (int,)) == 3 and _typed("True", (bool,)) is True
