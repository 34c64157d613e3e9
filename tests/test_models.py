"""Every registered model builds, runs forward and backward on the shapes it is used with."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, ArchitectureError, build_model
from tuner.data import DATASETS
from tuner.spaces import SPACES_DIR, load_space

SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


def uses():
    """(model, dataset) for every shipped space."""
    pairs = {(s.model, s.dataset) for s in map(load_space, sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))}
    return sorted(pairs)


def test_shapes_cover_every_dataset():
    assert set(SHAPES) == set(DATASETS)


@pytest.mark.parametrize("model,dataset", uses())
def test_model_runs_forward_and_backward_on_its_dataset_shape(model, dataset):
    shape, classes = SHAPES[dataset]
    space = load_space(next(p.stem for p in SPACES_DIR.glob("*.yaml")
                            if (load_space(p.stem).model, load_space(p.stem).dataset) == (model, dataset)))
    net = build_model(model, space.fixed, shape, classes)
    x = torch.randn(3, *shape, requires_grad=True)
    out = net(x)
    assert out.shape == (3, classes)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_builds_with_defaults(name):
    shape = (3, 32, 32)
    net = build_model(name, {}, shape, 10)
    assert net(torch.zeros(2, *shape)).shape == (2, 10)


def test_convnet_widths_grow_as_asked():
    flat = build_model("convnet", {"depth": 3, "width": 16, "growth": "flat"}, (3, 32, 32), 10)
    pyramid = build_model("convnet", {"depth": 3, "width": 16, "growth": "pyramid"}, (3, 32, 32), 10)
    explicit = build_model("convnet", {"channels": "8-24"}, (3, 32, 32), 10)
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert convs(flat) == [16, 16, 16] and convs(pyramid) == [16, 32, 64] and convs(explicit) == [8, 24]


def test_strided_downsampling_replaces_pooling():
    net = build_model("convnet", {"depth": 2, "downsample": "stride"}, (3, 32, 32), 10)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert [c.stride for c in net.modules() if isinstance(c, torch.nn.Conv2d)] == [(2, 2), (2, 2)]
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("model,config,shape,where", [
    ("convnet", {"depth": 4}, (1, 8, 8), "block 4 maxpool"),
    ("convnet", {"depth": 2, "kernel_size": 7, "padding": "valid"}, (1, 8, 8), "block 2 conv 1"),
    ("report003_mnist", {"kernel_size": 5, "padding": "valid"}, (1, 28, 28), "conv 3"),
])
def test_impossible_architectures_are_rejected_with_the_reason(model, config, shape, where):
    with pytest.raises(ArchitectureError, match=f"{where}: the .* feature map shrinks below 1x1"):
        build_model(model, config, shape, 10)


def test_report003_mnist_matches_the_reports_table():
    net = build_model("report003_mnist", {}, (1, 28, 28), 10)
    # conv 104 + 808 + 3,216, FC 784*64+64 = 50,240, output 650 (Table 1: 7x7x16 = 784 flattened)
    assert sum(p.numel() for p in net.parameters()) == 55_018


# Parameter counts from the reports' tables. Only report 004 states one (390,400 for its LeNet); the others
# are the sums of their tables' layers, written out so that a changed layer shows.
COUNTS = [
    # 2,432 + 51,264 + 204,928 + 131,136 + 650: the report's 390,400 leaves out the output layer's 10 biases
    ("report004_lenet", (3, 32, 32), 390_410),
    ("report004_model2", (3, 32, 32), 390_410 + 2 * (32 + 64 + 128) + 2 * 64),   # + BatchNorm2d x3, BatchNorm1d
    # convs 896 + 18,496 + 73,856 + 295,168 + 1,180,160, BN 1,344, FC 16,779,264 + 131,136, BN 128, out 650
    ("report004_model1", (3, 32, 32), 18_481_098),
    ("report003_mnist", (1, 28, 28), 55_018),
    ("report003_cifar", (3, 32, 32), 448 + 4_640 + 18_496 + 262_208 + 8_320 + 1_290),         # Table 4, 3x3
    ("report002_cnn", (3, 32, 32), 2_432 + 25_632 + 51_264 + 10_250),                        # 4x4x64 -> 10
    ("report000_cnn", (3, 32, 32), 4_864 + 102_464 + 1_573_248 + 73_920 + 1_930),            # 8x8x64 -> 384
    ("report001_mlp", (1, 28, 28), 784 * 300 + 300 + 300 * 10 + 10),
]


@pytest.mark.parametrize("name,shape,count", COUNTS)
def test_parameter_counts_match_the_reports_tables(name, shape, count):
    net = build_model(name, {}, shape, 10)
    assert sum(p.numel() for p in net.parameters()) == count


def leaf_types(net) -> list[str]:
    return [type(m).__name__ for m in net.modules() if not list(m.children())]


def test_report004_models_are_table_2_layer_for_layer():
    model1 = ["Conv2d", "ReLU", "Dropout2d", "BatchNorm2d", "MaxPool2d", "Conv2d", "ReLU", "Conv2d", "ReLU",
              "BatchNorm2d", "MaxPool2d", "Conv2d", "ReLU", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Flatten",
              "Linear", "ReLU", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    model2 = ["Conv2d", "Dropout2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
              "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    one = build_model("report004_model1", {}, (3, 32, 32), 10)
    two = build_model("report004_model2", {}, (3, 32, 32), 10)
    assert leaf_types(one) == model1 and leaf_types(two) == model2
    assert [c.out_channels for c in one.modules() if isinstance(c, torch.nn.Conv2d)] == [32, 64, 128, 256, 512]
    assert [f.out_features for f in one.modules() if isinstance(f, torch.nn.Linear)] == [2048, 64, 10]
    assert one.features.drop1.p == 0.1 and two.features.drop1.p == 0.1
    for net in (one, two):   # Xavier init: zero biases, weights within the Xavier-uniform bound
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
                assert m.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 and not m.bias.any()
    lenet = build_model("report004_lenet", {"batch_norm": True, "conv_dropout": 0.1, "init": "xavier"}, (3, 32, 32), 10)
    assert leaf_types(lenet) == model2


def test_model1_strides_instead_of_pooling():
    net = build_model("report004_model1", {"downsample": "stride"}, (3, 32, 32), 10)
    assert "MaxPool2d" not in leaf_types(net)
    assert [c.stride[0] for c in net.modules() if isinstance(c, torch.nn.Conv2d)] == [2, 1, 2, 1, 2]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,config,shape", [
    ("resnet18", {}, (1, 28, 28)), ("resnet18", {"input_size": 64}, (1, 8, 8)),
    ("vgg16", {"input_size": 32}, (1, 28, 28)),
    ("alexnet", {}, (1, 28, 28)), ("alexnet", {"fc": "64-32", "dropout": 0.5}, (3, 32, 32)),
    ("report002_cnn", {"pool": "caffe", "lrn": "across"}, (3, 32, 32)), ("report002_cnn", {}, (1, 28, 28)),
])
def test_transfer_backbones_take_small_and_one_channel_images(name, config, shape):
    net = build_model(name, config, shape, 100)
    x = torch.randn(2, *shape, requires_grad=True)
    out = net(x)
    out.sum().backward()
    assert out.shape == (2, 100) and x.grad is not None


def test_a_backbone_that_cannot_take_the_input_says_to_resize_it():
    with pytest.raises(ArchitectureError, match="vgg16: the 28x28 input shrinks below 1x1 .*set a larger input_size"):
        build_model("vgg16", {}, (1, 28, 28), 10)


def test_every_model_is_a_backbone_then_a_head():
    for name in MODELS:
        net = build_model(name, {}, (3, 32, 32), 10)
        assert isinstance(net.features, torch.nn.Module) and isinstance(net.classifier, torch.nn.Module)
        assert {n.split(".")[0] for n, _ in net.named_parameters()} <= {"features", "classifier"}
