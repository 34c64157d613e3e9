"""The ranges of numeric settings and flags, in one table each, checked before anything starts.

``SETTINGS`` is keyed by setting name and applies wherever a value of that setting appears: a space's
``fixed:`` values, ``--set``, both bounds of every distribution, every ``choice``, ``start:`` and
``reference:`` points, and the settings stored beside a logged model. ``FLAGS`` is keyed by the
command's argument names. A setting without an entry keeps its type check only; NaN and infinities are
refused for every number, listed or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; ``None`` leaves a side open to infinity."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_included)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_included)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_included else '>'} {_text(self.low)}"
        if self.low is None:
            return f"{'<=' if self.high_included else '<'} {_text(self.high)}"
        left, right = "[" if self.low_included else "(", "]" if self.high_included else ")"
        return f"in {left}{_text(self.low)}, {_text(self.high)}{right}"


def _text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def at_least(low: float) -> Range:
    return Range(low)


def above(low: float) -> Range:
    return Range(low, low_included=False)


def fraction(high_included: bool = False) -> Range:
    """[0, 1) (a probability of dropping, a decay) or [0, 1]."""
    return Range(0, 1, high_included=high_included)


COUNT = at_least(1)              # layers, filters, pixels of a kernel or stride
SEED_MAX = 2 ** 32 - 1           # numpy and scikit-learn take seeds below 2**32

SETTINGS: dict[str, Range] = {
    # training (tuner/train.py's TrainConfig)
    "lr": above(0), "batch_size": at_least(2),   # fixed-shape batches; batch norm needs two images
    "eval_batch_size": at_least(0), "momentum": fraction(high_included=True), "weight_decay": at_least(0),
    "lr_step_epochs": above(0), "lr_gamma": above(0), "warmup_epochs": at_least(0),
    "label_smoothing": fraction(), "crop_padding": at_least(0), "patience": at_least(0),
    "min_delta": at_least(0), "grad_clip": at_least(0), "ema": fraction(), "seed": Range(0, SEED_MAX),
    "max_epochs": COUNT,
    # transfer
    "head_lr": at_least(0), "input_size": at_least(0),
    # architectures
    "dropout": fraction(), "conv_dropout": fraction(), "depth": COUNT, "convs_per_block": COUNT, "width": COUNT,
    "max_width": COUNT, "kernel_size": COUNT, "stride": COUNT, "pool_size": COUNT, "filters": COUNT,
    "hidden": COUNT, "growth": above(0), "padding": at_least(0), "bn_momentum": fraction(high_included=True),
    "scale": above(0), "lrn_alpha": at_least(0), "lrn_beta": at_least(0),
    # a space's top level and sections
    "num_samples": COUNT, "val_fraction": Range(0, 1, False, False), "cpu": above(0), "gpu": at_least(0),
    "grace_period": COUNT, "reduction_factor": at_least(2), "brackets": Range(1, 8), "startup_trials": at_least(0),
    "random_fraction": fraction(high_included=True),
}

FLAGS: dict[str, Range] = {
    "num_samples": COUNT, "max_epochs": COUNT, "cpus_per_trial": above(0), "gpus_per_trial": at_least(0),
    "max_concurrent": COUNT, "max_failures": at_least(0), "seed": Range(0, SEED_MAX), "log_top_k": at_least(0),
    # python -m tuner.analyze
    "probe_samples": at_least(2), "tsne_points": at_least(2), "robustness_images": COUNT,
}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problem(name: str, value, table: dict[str, Range] = SETTINGS) -> str | None:
    """Why ``value`` is not allowed for ``name`` ("is not a finite number", "must be > 0"), or None. Text
    and other non-numbers are not this table's business (the type checks see to them)."""
    if not is_number(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    allowed = table.get(name)
    if allowed is not None and value not in allowed:
        return f"is out of range: {name} must be {allowed}"
    return None


def check_flags(args, table: dict[str, Range] = FLAGS) -> None:
    """Every numeric flag of ``args`` (an argparse namespace) that is set, against its range."""
    from tuner.errors import UserError

    for name, value in sorted(vars(args).items()):
        why = problem(name, value, table)
        if why is not None:
            raise UserError(f"--{name.replace('_', '-')} {value} {why}")
