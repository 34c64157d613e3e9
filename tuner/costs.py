"""What a trial's network costs to use: its parameter count and its inference latency on the trial's device.

Neither depends on the weights, so a trial measures them once, at its first report, and reports them with
every result after (``params``, ``latency_ms``, ``latency_batch_ms``): a multi-objective search can minimise
them, and the search's report sets them beside the accuracy. Latency is timed the way the trial evaluates:
the evaluated model in eval mode, under inference mode and the trial's autocast, on images already on the
device (normalisation included). One untimed pass first (cuDNN picks its kernels, caches warm up), then the
median of up to ``REPEATS`` passes, timed with ``time.perf_counter`` and, on CUDA, a synchronisation before
and after each pass. Passes stop once ``SECONDS`` have gone by, so a large network on a CPU costs a few
passes, not a minute.
"""

from __future__ import annotations

import statistics
import time

import torch

from tuner.batches import normalize
from tuner.train import autocast

COST_METRICS = ("params", "latency_ms", "latency_batch_ms")
LARGE_BATCH = 256     # images in the large batch (latency_batch_ms)
REPEATS = 5           # timed passes at most, per batch size
SECONDS = 0.5         # timed passes stop after this long (at least one is timed)


def parameter_count(model: torch.nn.Module) -> int:
    """Every parameter, trained or frozen: what the network holds at inference."""
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency_ms(model: torch.nn.Module, images: torch.Tensor, mean, std) -> float:
    """Median milliseconds of one forward pass over ``images`` (uint8, on the model's device)."""
    device = images.device

    def forward():
        with autocast(device):
            model(normalize(images, mean, std))

    model.eval()
    forward()                      # untimed: kernel choice, allocator and cache warm-up
    times, start = [], time.perf_counter()
    while len(times) < REPEATS and (not times or time.perf_counter() - start < SECONDS):
        _sync(device)
        t0 = time.perf_counter()
        forward()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def batch_of(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first n images, repeated where there are fewer (a small validation set)."""
    reps = -(-n // len(images))
    return images.repeat(reps, *([1] * (images.dim() - 1)))[:n] if reps > 1 else images[:n]


def model_costs(model: torch.nn.Module, images: torch.Tensor, mean, std) -> dict[str, float]:
    """``params``, ``latency_ms`` (one image) and ``latency_batch_ms`` (LARGE_BATCH images) of ``model``,
    timed on validation images; the model is left in eval mode."""
    return {"params": float(parameter_count(model)),
            "latency_ms": latency_ms(model, batch_of(images, 1), mean, std),
            "latency_batch_ms": latency_ms(model, batch_of(images, LARGE_BATCH), mean, std)}


def unknown_costs() -> dict[str, float]:
    """What a trial whose network could not be built reports: no figure (NaN), but every key, so a search
    that minimises one of them still gets each key in every result."""
    return {k: float("nan") for k in COST_METRICS}
