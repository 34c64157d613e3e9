"""Progress lines for the report's long steps (t-SNE, probes): one line when a step starts, one when it ends,
and a counter in between that rewrites itself on a terminal (and stays quiet in a log file)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def say(text: str) -> None:
    print(text, flush=True)


def tick(text: str, done: int, total: int) -> None:
    if sys.stdout.isatty():
        end = "\n" if done == total else ""
        print(f"\r    {text}: {done}/{total}", end=end, flush=True)


@contextmanager
def step(text: str):
    """Say what starts and how long it took."""
    say(f"  {text} ...")
    start = time.perf_counter()
    yield
    say(f"  {text}: done in {time.perf_counter() - start:.1f} s")
