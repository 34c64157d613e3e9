"""Robustness (report 001): test accuracy under the transforms the report tried, against the clean accuracy.

Each transform (torchvision.transforms.v2) draws its random parameters per image, seeded, so two reports
of one model agree. ColorJitter changes only brightness and contrast of one-channel images (saturation
and hue need colour).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from tuner.analysis.figures import grid, save, show
from tuner.analysis.html import Section
from tuner.analysis.layers import forward
from tuner.analysis.progress import step
from tuner.analysis.settings import (BLUR_KERNEL, BLUR_SIGMA, JITTER, JITTER_GRAY, PERSPECTIVE_DISTORTION,
                                     ROBUSTNESS_EXAMPLES, ROTATION_DEGREES, SCALE, TRANSLATE)
from tuner.analysis.source import Source, subset

CLEAN = "clean"


def transforms(channels: int) -> dict[str, tuple[v2.Transform, str]]:
    """name -> (transform, its settings in words)."""
    jitter = JITTER if channels == 3 else {k: JITTER[k] for k in JITTER_GRAY}
    return {
        "ColorJitter": (v2.ColorJitter(**jitter), ", ".join(f"{k} {v}" for k, v in jitter.items())),
        "GaussianBlur": (v2.GaussianBlur(BLUR_KERNEL, BLUR_SIGMA),
                         f"kernel {BLUR_KERNEL} px, sigma {BLUR_SIGMA[0]}-{BLUR_SIGMA[1]} px"),
        "RandomPerspective": (v2.RandomPerspective(PERSPECTIVE_DISTORTION, p=1.0),
                              f"distortion scale {PERSPECTIVE_DISTORTION}, every image"),
        "RandomRotation(45)": (v2.RandomRotation(ROTATION_DEGREES),
                               f"-{ROTATION_DEGREES:g} to {ROTATION_DEGREES:g} degrees"),
        "RandomAffine translate": (v2.RandomAffine(0, translate=TRANSLATE),
                                   f"shift up to {TRANSLATE[0]:.0%} of the width, {TRANSLATE[1]:.0%} of the height"),
        "RandomAffine scale": (v2.RandomAffine(0, scale=SCALE), f"zoom {SCALE[0]}-{SCALE[1]}"),
    }


@contextmanager
def one_thread():
    # Per-image transforms of small images run 10-40x slower on a thread pool than on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def apply(transform: v2.Transform, images: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> the same, each image with its own random parameters (seeded)."""
    with torch.random.fork_rng(), one_thread():
        torch.manual_seed(seed)
        return torch.stack([transform(img) for img in torch.from_numpy(images)]).numpy()


def examples_figure(shown: dict[str, np.ndarray], predicted: dict[str, np.ndarray], labels: np.ndarray,
                    classes: list[str], path: Path) -> Path:
    """One row per transform, the same images in every row, each titled with the model's answer."""
    n = min(ROBUSTNESS_EXAMPLES, len(labels))
    fig, axes = grid(n * len(shown), n, "the same test images under each transform (red: misclassified)")
    for r, (name, images) in enumerate(shown.items()):
        for c in range(n):
            ok = predicted[name][c] == labels[c]
            show(axes[r * n + c], images[c], f"pred {classes[predicted[name][c]]}", "black" if ok else "tab:red")
        axes[r * n].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    return save(fig, path)


def robustness_section(source: Source, out: Path, count: int, seed: int) -> Section:
    images = subset(source.test, count, seed)
    chosen = transforms(images.images.shape[1])
    shown, predicted = {CLEAN: images.images}, {}
    with step(f"robustness: {len(chosen)} transforms of {len(images)} test images"):
        for name, (transform, _) in chosen.items():
            shown[name] = apply(transform, images.images, seed)
        for name, x in shown.items():
            predicted[name] = forward(source.model, x)[0].argmax(1)
    accuracy = {name: float((p == images.labels).mean()) for name, p in predicted.items()}
    table = pd.DataFrame([{"transform": name, "settings": chosen[name][1] if name in chosen else "none",
                           "accuracy": acc, "change": round(acc - accuracy[CLEAN], 6)}
                          for name, acc in accuracy.items()])
    table.to_csv(out / "robustness.csv", index=False)
    s = Section("robustness", "Robustness to transforms",
                f"Accuracy on {len(images)} test images, each transformed with its own random parameters (seed "
                f"{seed}), against their clean accuracy; change is transformed minus clean.")
    s.attach(out / "robustness.csv")
    s.table(table, "one row per transform; the first is the untransformed images")
    s.figure(examples_figure(shown, predicted, images.labels, images.classes, out / "robustness_examples.png"),
             "each row: one transform of the same images")
    s.facts = {f"robust_accuracy_{name}": acc for name, acc in accuracy.items()}
    return s
