"""One training step's batch, forward and backward, replayed as a CUDA graph.

A small CNN's step is hundreds of kernel launches, each a few microseconds of Python and driver work around
microseconds of GPU work: launches, not the GPU, set the pace. Captured once as a CUDA graph, the step is
one launch. What makes it capturable is upstream: fixed batch shapes and every per-step input read from the
device by index (``tuner.batches``), no host sync inside the step.

The optimizer, the schedule and the weight average run eagerly after each replay: they are a few
multi-tensor (foreach) kernels, and torch 2.14's SGD reads a tensor learning rate with ``.item()``, so an
optimizer step with a schedule cannot be captured for every optimizer the spaces use.

Gradients: before the capture every gradient is set to None, so the captured backward allocates them in the
graph's memory and each replay overwrites them there (no zeroing, no accumulation); ``param.grad`` keeps
pointing at them, which is what the eager optimizer reads. On the CPU, or when capture is off or fails, the
same step function runs eagerly with the gradients set to None before each call: the same arithmetic.
"""

from __future__ import annotations

import logging
from typing import Callable, Hashable

import torch

log = logging.getLogger("tuner.graphs")
WARMUP_STEPS = 3    # eager steps before a capture: cuDNN picks its kernels, lazy state is allocated


class StepRunner:
    """Runs ``step`` (no arguments, no result: it reads and writes device tensors) once per call."""

    def __init__(self, step: Callable[[], None], params: list[torch.nn.Parameter], use_graph: bool):
        self.step, self.params = step, params
        self.use_graph = use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.eager_steps = 0
        self.stream = torch.cuda.Stream() if use_graph else None

    def __call__(self, key: Hashable = None) -> None:
        """One step. ``key`` names what the step's structure depends on (which parameters train): a new key
        drops the graph, and the step is warmed up and captured again."""
        if key != self.key:
            self.key, self.graph, self.eager_steps = key, None, 0
            self._clear_grads()
        if self.graph is None and self.use_graph and self.eager_steps >= WARMUP_STEPS:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _eager(self) -> None:
        self._clear_grads()
        if self.stream is None:
            self.step()
        else:   # warm-up steps run on a side stream, as a capture later will
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self.step()
            torch.cuda.current_stream().wait_stream(self.stream)
        self.eager_steps += 1

    def _capture(self) -> None:
        self._clear_grads()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()     # recorded, not run: the replay that follows runs it
        except Exception as exc:   # an op that cannot be captured: stay eager, same results
            log.warning("training step not captured as a CUDA graph (%s: %s); it runs eagerly",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            self.use_graph = False
            self._clear_grads()
            return
        self.graph = graph
