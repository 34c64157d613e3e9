"""Space files: every shipped one loads; each kind of mistake is one line naming the file and the key."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Domain

from tuner.errors import UserError
from tuner.spaces import SPACES_DIR, find_space, list_spaces, load_space, parse_override

SHIPPED = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
BASE = "description: test space\ndataset: digits\nmodel: convnet\n"


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_issue_spaces_are_shipped():
    assert {"quickstart", "mnist_filters_strides", "cifar_depth", "cifar_regularization"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_loads_and_builds_a_param_space(name):
    space = load_space(name)
    assert space.description and space.search
    params = space.param_space()
    assert all(isinstance(params[k], Domain) for k in space.search)
    assert params["model"] == space.model and params["max_epochs"] == space.max_epochs
    assert 1 <= space.grace_period <= space.max_epochs


def test_list_gives_every_space_with_a_one_line_description():
    listed = dict(list_spaces())
    assert sorted(listed) == SHIPPED
    assert all(desc and "\n" not in desc and "broken" not in desc for desc in listed.values())


def test_a_users_file_by_path(tmp_path):
    path = write(tmp_path, BASE + "search:\n  lr: {loguniform: [1e-4, 1e-2]}\n")
    space = load_space(path)
    # PyYAML reads 1e-4 as a string; the loader takes it as the number it is.
    assert space.search["lr"] == ("loguniform", [1e-4, 1e-2])


def test_int_bounds_are_inclusive(tmp_path):
    space = load_space(write(tmp_path, BASE + "search:\n  depth: {int: [1, 3]}\n"))
    domain = space.param_space()["depth"]
    assert {domain.sample() for _ in range(200)} == {1, 2, 3}


@pytest.mark.parametrize("name", ["nope", "../quickstart", "a/b", "..", "quickstart/../quickstart"])
def test_unknown_names_and_path_walks_are_errors(name):
    with pytest.raises(UserError) as err:
        find_space(name)
    assert "\n" not in str(err.value)


BAD = {
    "malformed YAML": ("search:\n  lr: {loguniform: [1, 2]\n", "not valid YAML at line"),
    "not a mapping": ("- a\n- b\n", "a space file is a YAML mapping"),
    "unknown top-level key": ("serch: {}\n", "serch: unknown key"),
    "unknown setting": ("search:\n  lrr: {uniform: [0, 1]}\n", "search.lrr: unknown setting for model convnet"),
    "unknown distribution": ("search:\n  lr: {logunif: [1, 2]}\n", "search.lr: unknown distribution 'logunif'"),
    "wrong arity": ("search:\n  lr: {uniform: [1]}\n", "search.lr: uniform takes [low, high]"),
    "low >= high": ("search:\n  lr: {uniform: [2, 1]}\n", "search.lr: uniform needs low < high"),
    "log of zero": ("search:\n  lr: {loguniform: [0, 1]}\n", "search.lr: loguniform needs low > 0"),
    "empty choice": ("search:\n  width: {choice: []}\n", "search.width: choice needs a non-empty list"),
    "float on an int": ("search:\n  batch_size: {uniform: [16, 64]}\n", "search.batch_size: batch_size takes int"),
    "wrong type": ("fixed:\n  batch_size: 64.5\nsearch:\n  lr: {uniform: [0.1, 1]}\n", "fixed.batch_size: 64.5"),
    "bad enum": ("fixed:\n  optimizer: adm\nsearch:\n  lr: {uniform: [0.1, 1]}\n", "fixed.optimizer: 'adm'"),
    "list value": ("fixed:\n  fc: [64, 128]\nsearch:\n  lr: {uniform: [0.1, 1]}\n", "as a string: '64-128'"),
    "fixed and searched": ("fixed:\n  lr: 0.1\nsearch:\n  lr: {uniform: [0.1, 1]}\n", "search.lr: is also in fixed"),
    "reserved key": ("fixed:\n  max_epochs: 3\nsearch:\n  lr: {uniform: [0.1, 1]}\n", "fixed.max_epochs: is set by"),
    "nothing searched": ("fixed:\n  lr: 0.1\n", "search: names no hyperparameter"),
    "bad scheduler": ("search:\n  lr: {uniform: [0.1, 1]}\nscheduler: {max_epochs: 2, grace_period: 5}\n",
                      "need 1 <= grace_period (5) <= max_epochs (2)"),
    "bad metric": ("search:\n  lr: {uniform: [0.1, 1]}\nmetric: accuracy\n", "metric: 'accuracy' is not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_file_gives_one_line_naming_file_and_key(tmp_path, case):
    body, expected = BAD[case]
    text = body if case in ("malformed YAML", "not a mapping") else BASE + body
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(path) and expected in message and "\n" not in message


@pytest.mark.parametrize("field,value,allowed", [("model", "resnet9000", "convnet"),
                                                 ("dataset", "imagenet", "cifar10")])
def test_unknown_model_or_dataset_lists_what_is_allowed(tmp_path, field, value, allowed):
    text = BASE.replace(f"{field}: {'convnet' if field == 'model' else 'digits'}", f"{field}: {value}")
    path = write(tmp_path, text + "search:\n  lr: {uniform: [0.1, 1]}\n")
    with pytest.raises(UserError, match=f"{field}: '{value}' is not allowed; use one of: .*{allowed}"):
        load_space(path)


def test_overrides_are_checked_like_fixed_settings():
    space = load_space("quickstart")
    assert parse_override("lr=0.01", space) == ("lr", 0.01)
    assert parse_override("fc=64-128", space) == ("fc", "64-128")
    for bad, msg in (("lr", "expected KEY=VALUE"), ("foo=1", "unknown setting"), ("lr=abc", "not a number"),
                     ("seed=3", "unknown setting")):
        with pytest.raises(UserError, match=msg):
            parse_override(bad, space)
