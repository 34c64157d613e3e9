"""Drawing helpers the report's figures share (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tuner.analysis.settings import DPI  # noqa: E402

CELL = 1.3          # inches per image of a grid
TITLE_SIZE = 8      # points, titles over grid images


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def to_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) -> what imshow takes: (H, W) with a grey colour map, or (H, W, 3) for colour."""
    if image.shape[0] == 3:
        return np.transpose(image, (1, 2, 0)), None
    return image[0], "gray"


def show(ax, image: np.ndarray, title: str = "", color: str = "black") -> None:
    pixels, cmap = to_display(image)
    vmax = 255 if pixels.dtype == np.uint8 else None
    ax.imshow(pixels, cmap=cmap, vmin=0 if vmax else None, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=TITLE_SIZE, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


def grid(n: int, columns: int, title: str = ""):
    """A figure of n image cells, ``columns`` a row; the unused cells are blank."""
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(CELL * columns, CELL * rows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig, list(axes.flat[:n])


def image_grid(images: np.ndarray, titles: list[str], path: Path, columns: int, title: str = "",
               colors: list[str] | None = None) -> Path:
    if len(images) == 0:
        return message(path, title + ": none")
    fig, axes = grid(len(images), columns, title)
    for i, ax in enumerate(axes):
        show(ax, images[i], titles[i], colors[i] if colors else "black")
    return save(fig, path)


def message(path: Path, text: str) -> Path:
    """A small figure that says why there is nothing to draw, so every report has the same files."""
    fig, ax = plt.subplots(figsize=(5, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return save(fig, path)


def plain_log_axis(ax) -> None:
    """A log x axis labelled in plain numbers (34, 2000), the minor ticks too where the range is short."""
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=30)
