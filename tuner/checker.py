"""Checks of a space file's values: each problem is one line that names the file and the key."""

from __future__ import annotations

import math
from pathlib import Path

from tuner import limits
from tuner.errors import UserError


class SpaceChecker:
    """Raises one-line UserErrors that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, msg: str):
        raise UserError(f"{self.path}: {key}: {msg}")

    def number(self, key: str, value, kind=float):
        # PyYAML reads 1e-4 (no dot) as a string: accept any number written as text.
        if isinstance(value, bool):
            self.fail(key, f"{value!r} is not a number")
        try:
            num = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(key, f"{value!r} is not a number")
        if not math.isfinite(num):
            self.fail(key, f"{value!r} is not a finite number")
        if kind is int and num != int(num):
            self.fail(key, f"{value!r} is not a whole number")
        return int(num) if kind is int else num

    def in_range(self, key: str, name: str, value):
        """``value`` within ``name``'s range (tuner.limits), else one line naming the key."""
        why = limits.problem(name, value)
        if why is not None:
            self.fail(key, f"{value!r} {why}")
        return value

    def mapping(self, key: str, value) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping of keys to values, got {type(value).__name__}")
        return value

    def switch(self, key: str, value) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"{value!r} is not allowed; use true or false")
        return value

    def one_of(self, key: str, value, allowed):
        if value not in allowed:
            self.fail(key, f"{value!r} is not allowed; use one of: {', '.join(map(str, allowed))}")
        return value
