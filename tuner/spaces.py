"""Search-space files: find, load, validate, and turn into a Ray Tune param space.

A space file (YAML) names a dataset, a registered model, fixed settings, the searched hyperparameters with
their distributions, the metric, the ASHA settings, the number of trials and the default resources; see
README.md ("Writing a space file"). Everything is checked when the file is loaded, and each problem is one
line naming the file, the key and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from models import MODEL_VALUES, MODELS
from tuner.checker import SpaceChecker
from tuner.costs import COST_METRICS
from tuner.data import DATASETS
from tuner.errors import UserError
from tuner.reference import FIGURES, NOTES
from tuner.safe_yaml import parse_yaml, read_space_file
from tuner.sampling import SearcherSettings, check_searcher
from tuner.space_files import SPACES_DIR, find_space
from tuner.train import AUGMENTS, OPTIMIZERS, SCHEDULES, TRAIN_KEYS
from tuner.transfer import SETTING_VALUES, TRANSFER_KEYS

METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
TOP_KEYS = ("description", "dataset", "model", "val_fraction", "fixed", "search", "metric", "mode", "scheduler",
            "num_samples", "resources", "reference", "start", "objectives", "searcher")
SCHEDULER_KEYS = ("max_epochs", "grace_period", "reduction_factor", "brackets", "quorum", "stop_at_chance", "pruner")
PRUNERS = ("asha", "median", "hyperband")   # who stops trials: Ray's ASHA, or an Optuna pruner (tuner.pruning)
PRUNER_CLASSES = {"median": "MedianPruner", "hyperband": "HyperbandPruner"}
RESOURCE_KEYS = ("cpu", "gpu")
# Keys the search sets itself (from the top level, the scheduler section and --seed), never fixed/search.
RESERVED = ("model", "dataset", "metric", "mode", "max_epochs", "seed")
# Settings with a closed set of values, checked at load time wherever they appear.
ENUMS = {"optimizer": OPTIMIZERS, "lr_schedule": SCHEDULES, "augment": AUGMENTS,
         "early_stop_on": ("val_loss", "val_accuracy"), **SETTING_VALUES, **MODEL_VALUES}
# Distribution -> (number of arguments, builder). "int" bounds are inclusive at both ends.
DISTRIBUTIONS = {
    "choice": (None, lambda v: tune.choice(v)),
    "uniform": (2, lambda a: tune.uniform(*a)),
    "quniform": (3, lambda a: tune.quniform(*a)),
    "loguniform": (2, lambda a: tune.loguniform(*a)),
    "qloguniform": (3, lambda a: tune.qloguniform(*a)),
    "int": (2, lambda a: tune.randint(int(a[0]), int(a[1]) + 1)),
    # Ray's qrandint leaves out its upper bound when q is 1 (Optuna's conversion of it does not): randint then
    "qint": (3, lambda a: tune.qrandint(int(a[0]), int(a[1]), int(a[2])) if int(a[2]) > 1
             else tune.randint(int(a[0]), int(a[1]) + 1)),
    "logint": (2, lambda a: tune.lograndint(int(a[0]), int(a[1]) + 1)),
}


@dataclass
class Space:
    name: str
    path: Path
    description: str
    dataset: str
    model: str
    fixed: dict[str, Any]
    search: dict[str, tuple[str, Any]]          # key -> (distribution, arguments)
    metric: str = "val_accuracy"
    mode: str = "max"
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 3
    brackets: int = 1                           # ASHA's brackets; more than one is Hyperband's hedge on grace
    quorum: bool = False                        # ASHA promotes nobody until a rung has seen reduction_factor trials
    stop_at_chance: bool = True                 # ASHA stops trials no better than chance from grace_period on
    pruner: str = "asha"                        # or Optuna's MedianPruner / HyperbandPruner (tuner.pruning)
    num_samples: int = 10
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    val_fraction: float = 0.1
    reference: list[dict] = field(default_factory=list)
    start: list[dict] = field(default_factory=list)
    objectives: list[tuple[str, str]] = field(default_factory=list)   # (metric, mode); the first is ``metric``
    searcher: SearcherSettings = field(default_factory=SearcherSettings)

    @property
    def stopper(self) -> str:
        """Who stops trials early in this space's searches, as end reasons name it."""
        return stopper_name(self.pruner)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def param_space(self) -> dict[str, Any]:
        """Fixed settings and Ray Tune domains for the searched ones, as one flat dict."""
        space = {**self.fixed, "model": self.model, "dataset": self.dataset, "metric": self.metric,
                 "mode": self.mode, "max_epochs": self.max_epochs}
        for key, (kind, args) in self.search.items():
            space[key] = DISTRIBUTIONS[kind][1](args)
        return space

    def grid_space(self) -> dict[str, Any]:
        """Every ``choice`` as an exhaustive grid (Ray's grid_search); every other searched setting takes the
        first ``start`` point's value (the report's, so a report's table reruns exactly), else stays random."""
        space = self.param_space()
        first = self.start[0] if self.start else {}
        for key, (kind, args) in self.search.items():
            if kind == "choice":
                space[key] = tune.grid_search(list(args))
            elif key in first:
                space[key] = first[key]
        return space


# ---- finding ---------------------------------------------------------------------------------------------

def stopper_name(pruner: str) -> str:
    """Who stops trials early under this ``scheduler.pruner``, as end reasons and reports name it."""
    return "ASHA" if pruner == "asha" else f"Optuna's {PRUNER_CLASSES[pruner]}"


def list_spaces() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped space."""
    out = []
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        try:
            desc = load_space(str(path)).description
        except UserError as exc:
            desc = f"(broken: {exc})"
        out.append((path.stem, desc.strip().splitlines()[0] if desc.strip() else ""))
    return out


# ---- loading and checking --------------------------------------------------------------------------------

TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "any": (str, int, float, bool)}


def setting_types(model: str) -> dict[str, tuple[type, ...]]:
    """Every setting a space may fix or search for ``model``, with the Python types it accepts."""
    annotated = {**TRAIN_KEYS, **TRANSFER_KEYS, **MODELS[model].params}
    out = {}
    for key, text in annotated.items():
        out[key] = tuple({t for part in text.split("|") for t in TYPES.get(part.strip(), TYPES["any"])})
    return out


def allowed_list(model: str) -> str:
    return ", ".join(sorted(k for k in setting_types(model) if k not in RESERVED))


def _check_value(c: SpaceChecker, key: str, value, types: tuple[type, ...], name: str) -> Any:
    if value is None:       # `lr:` with nothing after it, `~`, `null`, or `--set lr=`: no setting takes None
        c.fail(key, "has no value; give one, or leave the key out for its default")
    if isinstance(value, str) and str not in types and value.strip().lower() not in ("none", "null"):
        value = c.number(key, value, int if float not in types else float)  # 1e-4 arrives as a string
    if (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        wanted = " or ".join(t.__name__ for t in types)
        hint = " (write layer widths as a string: '64-128')" if isinstance(value, list) else \
            f" (write it as text: '{value}')" if str in types and isinstance(value, (int, float)) else ""
        c.fail(key, f"{value!r} is not a {wanted}{hint}")
    if name in ENUMS:
        c.one_of(key, value, ENUMS[name])
    return c.in_range(key, name, value)


def check_settings(where: str, model: str, values: dict, prefix: str = "") -> None:
    """``model``'s settings among ``values`` checked as a space's ``fixed:`` values are (type, closed set,
    range); other keys are left alone."""
    types, c = setting_types(model), SpaceChecker(Path(where))
    for key, value in values.items():
        if key in types:
            _check_value(c, f"{prefix}{key}", value, types[key], key)


def _check_distribution(c: SpaceChecker, key: str, name: str, spec, types: tuple[type, ...]) -> tuple[str, Any]:
    allowed = ", ".join(DISTRIBUTIONS)
    if not isinstance(spec, dict) or len(spec) != 1:
        c.fail(key, f"expected one distribution such as {{loguniform: [1.0e-4, 1.0e-2]}}; kinds: {allowed}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        c.fail(key, f"unknown distribution {kind!r}; use one of: {allowed}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            c.fail(key, "choice needs a non-empty list of values")
        return kind, [_check_value(c, f"{key}.choice", v, types, name) for v in args]
    n_args = DISTRIBUTIONS[kind][0]
    if not isinstance(args, list) or len(args) != n_args:
        shape = "[low, high]" if n_args == 2 else "[low, high, q]"
        c.fail(key, f"{kind} takes {shape}, got {args!r}")
    as_int = kind in ("int", "qint", "logint")
    if not as_int and float not in types:
        c.fail(key, f"{name} takes {' or '.join(t.__name__ for t in types)} values; use int, qint, logint or choice")
    nums = [c.number(key, a, int if as_int else float) for a in args]
    if nums[0] >= nums[1]:
        c.fail(key, f"{kind} needs low < high, got {nums[0]} and {nums[1]}")
    if kind.startswith(("log", "qlog")) and nums[0] <= 0:
        c.fail(key, f"{kind} needs low > 0, got {nums[0]}")
    if n_args == 3:
        _check_quantized(c, key, kind, nums)
    for bound in nums[:2]:   # both ends, so that every value drawn is in range
        c.in_range(key, name, bound)
    return kind, nums


def _check_quantized(c: SpaceChecker, key: str, kind: str, nums: list) -> None:
    low, high, q = nums
    if q <= 0:
        c.fail(key, f"{kind} needs q > 0, got {q}")
    if kind == "qloguniform":   # Ray's conversion to Optuna drops q with a warning
        c.fail(key, "Optuna's samplers cannot quantize a log scale; use loguniform, or choice of the values")
    for bound in (low, high):   # Ray refuses other bounds when the search starts; here it is one line now
        if not math.isclose(bound / q, round(bound / q)):
            c.fail(key, f"{kind} needs low and high that are multiples of q ({q}), got {bound}")


def _check_params(c: SpaceChecker, raw: dict, model: str) -> tuple[dict, dict]:
    allowed = setting_types(model)
    fixed, search = c.mapping("fixed", raw.get("fixed")), c.mapping("search", raw.get("search"))
    for section, values in (("fixed", fixed), ("search", search)):
        for name in values:
            if name in RESERVED:
                c.fail(f"{section}.{name}", f"is set by the space's top level ({', '.join(RESERVED)}), not here")
            if name not in allowed:
                c.fail(f"{section}.{name}", f"unknown setting for model {model}; allowed: {allowed_list(model)}")
    for name in set(fixed) & set(search):
        c.fail(f"search.{name}", "is also in fixed; a setting is either fixed or searched")
    fixed = {k: _check_value(c, f"fixed.{k}", v, allowed[k], k) for k, v in fixed.items()}
    search = {k: _check_distribution(c, f"search.{k}", k, v, allowed[k]) for k, v in search.items()}
    return fixed, search


def _check_scheduler(c: SpaceChecker, raw: dict) -> dict:
    sched = c.mapping("scheduler", raw.get("scheduler"))
    for k in sched:
        if k not in SCHEDULER_KEYS:
            c.fail(f"scheduler.{k}", f"unknown key; allowed: {', '.join(SCHEDULER_KEYS)}")
    switches = {k: c.switch(f"scheduler.{k}", v) for k, v in sched.items() if k in ("quorum", "stop_at_chance")}
    out = {k: c.in_range(f"scheduler.{k}", k, c.number(f"scheduler.{k}", v, int))
           for k, v in sched.items() if k not in switches and k != "pruner"}
    out.update(switches)
    if "pruner" in sched:
        out["pruner"] = c.one_of("scheduler.pruner", sched["pruner"], PRUNERS)
        if out["pruner"] != "asha" and (out.get("quorum") or out.get("brackets", 1) > 1):
            c.fail("scheduler.pruner", f"quorum and brackets are ASHA's; drop them or use pruner: asha, "
                                       f"not {out['pruner']}")
    max_epochs, grace = out.get("max_epochs", 10), out.get("grace_period", 1)
    if max_epochs < 1 or grace < 1 or grace > max_epochs:
        c.fail("scheduler", f"need 1 <= grace_period ({grace}) <= max_epochs ({max_epochs})")
    if out.get("reduction_factor", 3) < 2:
        c.fail("scheduler.reduction_factor", "must be at least 2")
    return out


def _check_resources(c: SpaceChecker, raw: dict) -> dict:
    res = c.mapping("resources", raw.get("resources"))
    for k in res:
        if k not in RESOURCE_KEYS:
            c.fail(f"resources.{k}", f"unknown key; allowed: {', '.join(RESOURCE_KEYS)}")
    return {"cpu": 1.0, "gpu": 0.0, **{k: c.in_range(f"resources.{k}", k, c.number(f"resources.{k}", v))
                                       for k, v in res.items()}}


def _check_reference(c: SpaceChecker, entries, types: dict, settable: set[str]) -> list[dict]:
    """``reference:``: a report's settings (ones the space fixes or searches) and the figures it reached."""
    if not isinstance(entries, list) or not all(isinstance(r, dict) for r in entries):
        c.fail("reference", "must be a list of mappings (the settings and the figure a report reached)")
    out = []
    for i, entry in enumerate(entries):
        where, checked = f"reference[{i}]", {}
        if not any(k in FIGURES for k in entry):
            c.fail(where, f"gives no figure; add one of {', '.join(FIGURES)}")
        for key, value in entry.items():
            if key in FIGURES:
                checked[key] = c.number(f"{where}.{key}", value)
                if key.endswith("accuracy") and not 0 <= checked[key] <= 1:
                    c.fail(f"{where}.{key}", f"{value} is not a fraction; write 98.14% as 0.9814")
            elif key in NOTES:
                checked[key] = str(value)
            elif key in settable:
                checked[key] = _check_value(c, f"{where}.{key}", value, types[key], key)
            else:
                c.fail(f"{where}.{key}", f"is not a figure ({', '.join(FIGURES)}), a note ({', '.join(NOTES)}) "
                                         f"or a setting this space fixes or searches")
        out.append(checked)
    return out


def default_mode(metric: str) -> str:
    return "max" if metric.endswith("accuracy") else "min"


def _check_objective(c: SpaceChecker, where: str, entry, first: bool) -> tuple[str, str]:
    """The first objective is what ASHA stops trials on (a metric of training, at the trial's best epoch);
    the others are what the network costs, measured by the trial (tuner.costs)."""
    if not isinstance(entry, dict) or "metric" not in entry:
        c.fail(where, "must be a mapping such as {metric: params, mode: min}")
    for key in entry:
        if key not in ("metric", "mode"):
            c.fail(f"{where}.{key}", "unknown key; allowed: metric, mode")
    metric, allowed = entry["metric"], METRICS if first else COST_METRICS
    if metric not in allowed:
        what = "the first objective is what ASHA stops trials on, a metric of training" if first else \
            "objectives after the first are what a network costs"
        c.fail(f"{where}.metric", f"{metric!r} is not allowed: {what}; use one of: {', '.join(allowed)}")
    return metric, c.one_of(f"{where}.mode", entry.get("mode", default_mode(metric)), ("max", "min"))


def _check_objectives(c: SpaceChecker, raw: dict) -> list[tuple[str, str]]:
    """``objectives:``: two or more metrics to trade off; the first takes the place of metric and mode."""
    entries = raw.get("objectives")
    if entries is None:
        return []
    if not isinstance(entries, list) or len(entries) < 2:
        c.fail("objectives", "must list two or more {metric: ..., mode: max|min}; for one, use metric: and mode:")
    if "metric" in raw or "mode" in raw:
        c.fail("objectives", "replaces metric: and mode: (the first objective is the search's metric); remove them")
    out = [_check_objective(c, f"objectives[{i}]", e, i == 0) for i, e in enumerate(entries)]
    metrics = [m for m, _ in out]
    if len(set(metrics)) < len(metrics):
        c.fail("objectives", f"names a metric twice: {', '.join(metrics)}")
    return out


def load_space(name_or_path: str) -> Space:
    path = find_space(name_or_path)
    raw, c = read_space_file(path), SpaceChecker(path)
    for key in raw:
        if key not in TOP_KEYS:
            c.fail(key, f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    for key in ("description", "dataset", "model"):
        if not raw.get(key):
            c.fail(key, "is required")
    c.one_of("dataset", raw["dataset"], list(DATASETS))
    c.one_of("model", raw["model"], sorted(MODELS))
    fixed, search = _check_params(c, raw, raw["model"])
    if not search:
        c.fail("search", "names no hyperparameter to search")
    objectives = _check_objectives(c, raw)
    metric, mode = objectives[0] if objectives else (None, None)
    metric = metric or c.one_of("metric", raw.get("metric", "val_accuracy"), METRICS)
    mode = mode or c.one_of("mode", raw.get("mode", "min" if metric.endswith("loss") else "max"), ("max", "min"))
    val_fraction = c.in_range("val_fraction", "val_fraction", c.number("val_fraction", raw.get("val_fraction", 0.1)))
    num_samples = c.in_range("num_samples", "num_samples", c.number("num_samples", raw.get("num_samples", 10), int))
    start = raw.get("start") or []
    if not isinstance(start, list) or not all(isinstance(p, dict) and set(p) <= set(search) for p in start):
        c.fail("start", "must be a list of mappings that give values of searched keys")
    for i, point in enumerate(start):      # Optuna's searcher takes a point only whole
        if set(point) != set(search):
            c.fail(f"start[{i}]", f"gives no value of {', '.join(sorted(set(search) - set(point)))}; a start point "
                                  f"gives every searched key")
    types = setting_types(raw["model"])
    start = [{k: _check_value(c, f"start[{i}].{k}", v, types[k], k) for k, v in p.items()} for i, p in enumerate(start)]
    reference = _check_reference(c, raw.get("reference") or [], types, set(fixed) | set(search))
    searcher = check_searcher(c.mapping("searcher", raw.get("searcher")), c)
    return Space(name=path.stem, path=path, description=str(raw["description"]).strip(), dataset=raw["dataset"],
                 model=raw["model"], fixed=fixed, search=search, metric=metric, mode=mode,
                 num_samples=num_samples, resources=_check_resources(c, raw), val_fraction=val_fraction,
                 reference=reference, start=start, objectives=objectives, searcher=searcher,
                 **_check_scheduler(c, raw))


def parse_override(text: str, space: Space) -> tuple[str, Any]:
    """``--set key=value``: fix a setting (value read as YAML) on top of the space; checked like ``fixed``."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. --set lr=0.001")
    key, value = text.split("=", 1)
    key = key.strip()
    allowed = setting_types(space.model)
    if key not in allowed or key in RESERVED:
        raise UserError(f"--set {key}: unknown setting for model {space.model}; allowed: {allowed_list(space.model)}")
    try:
        parsed = parse_yaml(value)
    except (yaml.YAMLError, RecursionError):
        raise UserError(f"--set {key}: {value[:80]!r} is not a value; quote text, e.g. --set fc=64-128") from None
    return key, _check_value(SpaceChecker(Path("command line")), f"--set {key}", parsed, allowed[key], key)
