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
    """(model, dataset) for every shipped space, plus each model on every dataset it can take by default."""
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
