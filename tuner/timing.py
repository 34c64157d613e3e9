"""Wall time per phase of a search, printed at the end and read by benchmarks/overhead.py."""

from __future__ import annotations

import time
from contextlib import contextmanager


class Timings:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def line(self) -> str:
        return ", ".join(f"{name} {secs:.1f} s" for name, secs in self.seconds.items())
