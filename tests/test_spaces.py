"""Space files: every shipped one loads; each kind of mistake is one line naming the file and the key."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Domain

from tuner.errors import UserError
from tuner.spaces import SPACES_DIR, find_space, list_spaces, load_space, parse_override

SHIPPED = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
BASE = "description: test space\ndataset: digits\nmodel: convnet\n"
LR = "search:\n  lr: {uniform: [0.1, 1]}\n"


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_issue_spaces_are_shipped():
    assert {"quickstart", "mnist_filters_strides", "cifar_depth", "cifar_regularization", "cifar_filters_strides",
            "cifar_lr_schedule", "cifar_refine", "cifar100_transfer", "mnist_mlp"} <= set(SHIPPED)


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


@pytest.mark.parametrize("q,values", [(1, {1, 2, 3, 4}), (2, {2, 4, 6})])
def test_qint_bounds_are_inclusive_for_ray_and_optuna(tmp_path, q, values):
    from ray.tune.search.optuna import OptunaSearch

    low = 1 if q == 1 else 2
    space = load_space(write(tmp_path, BASE + f"search:\n  depth: {{qint: [{low}, {max(values)}, {q}]}}\n"))
    domain = space.param_space()["depth"]
    assert {domain.sample() for _ in range(300)} == values        # Ray's own sampling (grid mode, random search)
    (dist,) = OptunaSearch.convert_search_space({"depth": domain}).values()
    assert (dist.low, dist.high, dist.step) == (low, max(values), q)                   # TPE's


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
    "scheduler switch not a boolean": (LR + "scheduler: {stop_at_chance: 1}\n",
                                       "scheduler.stop_at_chance: 1 is not allowed; use true or false"),
    "scheduler number a boolean": (LR + "scheduler: {max_epochs: true}\n",
                                   "scheduler.max_epochs: True is not a number"),
    "searcher switch not a boolean": (LR + "searcher: {multivariate: 'no'}\n",
                                      "searcher.multivariate: 'no' is not allowed; use true or false"),
    "bad metric": ("search:\n  lr: {uniform: [0.1, 1]}\nmetric: accuracy\n", "metric: 'accuracy' is not allowed"),
    "bad refine step": ("search:\n  refine_start_step: {choice: [0, later]}\n",
                        "refine_start_step.choice: 'later' is not allowed; use one of: a whole number >= 0, never"),
    "bad trainable layers": ("fixed:\n  trainable_layers: -2\nsearch:\n  lr: {uniform: [0.1, 1]}\n",
                             "fixed.trainable_layers: -2 is not allowed"),
    "reference without figure": (LR + "reference:\n  - {lr: 0.5}\n", "reference[0]: gives no figure"),
    "reference in percent": (LR + "reference:\n  - {lr: 0.5, test_accuracy: 98.1}\n", "write 98.14% as 0.9814"),
    "reference to an unset setting": (LR + "reference:\n  - {depth: 3, test_accuracy: 0.9}\n",
                                      "reference[0].depth: is not a figure"),
    "reference of a wrong type": (LR + "reference:\n  - {lr: fast, test_accuracy: 0.9}\n",
                                  "reference[0].lr: 'fast' is not a number"),
    "start of a wrong type": (LR + "start:\n  - {lr: fast}\n", "start[0].lr: 'fast' is not a number"),
    "objective that is not a metric": (LR + "objectives: [{metric: val_accuracy}, {metric: size, mode: min}]\n",
                                       "objectives[1].metric: 'size' is not allowed: objectives after the first are "
                                       "what a network costs; use one of: params, latency_ms, latency_batch_ms"),
    "first objective a cost": (LR + "objectives: [{metric: params}, {metric: val_accuracy}]\n",
                               "objectives[0].metric: 'params' is not allowed: the first objective is what ASHA "
                               "stops trials on"),
    "one objective": (LR + "objectives: [{metric: val_accuracy}]\n", "objectives: must list two or more"),
    "objectives and metric": (LR + "metric: val_loss\nobjectives: [{metric: val_accuracy}, {metric: params}]\n",
                              "objectives: replaces metric: and mode:"),
    "objective twice": (LR + "objectives: [{metric: val_accuracy}, {metric: params}, {metric: params}]\n",
                        "objectives: names a metric twice"),
    "objective mode": (LR + "objectives: [{metric: val_accuracy}, {metric: params, mode: low}]\n",
                       "objectives[1].mode: 'low' is not allowed; use one of: max, min"),
    "objective key": (LR + "objectives: [{metric: val_accuracy}, {metric: params, goal: min}]\n",
                      "objectives[1].goal: unknown key; allowed: metric, mode"),
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


def test_transfer_settings_take_a_count_or_their_word():
    space = load_space("cifar_refine")
    assert parse_override("refine_start_step=never", space) == ("refine_start_step", "never")
    assert parse_override("trainable_layers=5", space) == ("trainable_layers", 5)
    assert parse_override("pretrained=models:/cifar_depth@champion", space)[1] == "models:/cifar_depth@champion"
    with pytest.raises(UserError, match="'all' is not allowed; use one of: a whole number >= 0, never"):
        parse_override("refine_start_step=all", space)


def test_grid_reruns_a_reports_table_with_the_reports_other_settings():
    from ray.tune.search.variant_generator import generate_variants

    space = load_space("mnist_filters_strides")
    variants = [config for _, config in generate_variants(space.grid_space())]
    # kernel 3/5/7 x stride 1/2/3 x padding same/valid x L2 none/all: Table 3 and section 1.4
    assert len(variants) == 36
    assert {(v["kernel_size"], v["stride"], v["padding"], v["weight_decay_on"]) for v in variants} >= {
        (r["kernel_size"], r["stride"], r["padding"], r["weight_decay_on"]) for r in space.reference}
    assert {v["lr"] for v in variants} == {0.001} and {v["weight_decay"] for v in variants} == {0.02}


def test_reference_figures_go_beside_the_matching_settings():
    from tuner.reference import comparison, reference_figures

    reference = load_space("cifar_refine").reference
    config = {"refine_start_step": 1000, "fc": "384-192", "weight_decay": 0.0, "lr": 1e-4}
    assert reference_figures(config, reference) == {"report_test_accuracy": 0.8506}
    assert reference_figures({**config, "fc": "512-256"}, reference)["report_test_accuracy"] != 0.8506
    assert str(reference_figures({**config, "refine_start_step": 7}, reference)["report_test_accuracy"]) == "nan"
    lines = comparison(reference, {"test_accuracy": 0.9, "val_accuracy": 0.91}, 3)
    assert lines[0].startswith("Report's best: test_accuracy 0.8690 (refine_start_step=0, fc=384-192, "
                               "weight_decay=0.00015; report 000, section 3.4); 3 trial(s)")
    assert lines[1] == "This search's best: test_accuracy 0.9000, +0.0310 (beats the report)"
    figure_only = [{"test_accuracy": 0.746, "source": "report 002"}]
    assert reference_figures(config, figure_only) == {"report_test_accuracy": pytest.approx(float("nan"), nan_ok=True)}
    assert "(as the report trained it; report 002)" in comparison(figure_only, {"test_accuracy": 0.5}, 0)[0]


def test_objectives_name_the_metric_and_default_each_mode(tmp_path):
    space = load_space(write(tmp_path, BASE + LR + "objectives: [{metric: val_loss}, {metric: latency_ms}]\n"))
    assert space.objectives == [("val_loss", "min"), ("latency_ms", "min")] and space.multi_objective
    assert (space.metric, space.mode) == ("val_loss", "min")       # the first: ASHA's, the leaderboard's
    shipped = load_space("cifar_params_front")
    assert shipped.objectives == [("val_accuracy", "max"), ("params", "min")]
    assert not load_space("quickstart").multi_objective and load_space("quickstart").objectives == []


def within(kind: str, args: list, value) -> bool:
    """Whether ``value`` is one the space's distribution ``kind`` over ``args`` can give."""
    return value in args if kind == "choice" else args[0] <= value <= args[1]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spaces_searcher_draws_its_start_points_then_settings_within_the_space(name, tmp_path):
    """What a search asks of the searcher, without Ray: TPE, as the search builds it, takes the space and
    suggests the space's start points first, then seeded draws within every distribution."""
    from tuner.search import SearchOptions, effective_space, make_searcher

    space = load_space(name)
    opts = SearchOptions(name="s", storage_path=str(tmp_path), num_samples=6, max_epochs=space.max_epochs,
                         cpus_per_trial=1, gpus_per_trial=0)
    space = effective_space(space, opts)

    def draws():
        searcher = make_searcher(space, opts)
        assert searcher.set_search_properties(space.metric, space.mode, space.param_space())
        return [searcher.suggest(f"t{i}") for i in range(opts.num_samples)]

    configs = draws()
    assert configs == draws()                                            # seeded: the same trials again
    for point, config in zip(space.start, configs):
        assert {k: config[k] for k in point} == point
    for config in configs:
        assert set(config) == set(space.search)          # Ray adds the fixed settings to what TPE draws
        assert all(within(kind, args, config[key]) for key, (kind, args) in space.search.items()), config
    assert len({tuple(sorted(map(str, c.items()))) for c in configs}) > 1   # draws, not one point repeated
