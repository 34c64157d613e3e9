"""What the best model learned, layer by layer: weight and bias histograms (report 003), the first conv
layer's filters as images (report 004), and each conv layer's feature maps for one test image (003, 004)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tuner.analysis.figures import grid, image_grid, message, save, show
from tuner.analysis.html import Section
from tuner.analysis.layers import Layer, conv_layers, forward, weighted_layers
from tuner.analysis.settings import EXAMPLE_COLUMNS, MAX_FILTERS, MAX_MAPS
from tuner.analysis.source import Source

HIST_BINS = 50          # bins of each histogram
ROW_INCHES = 2.2        # height of one layer's row of histograms


def _values(layer: Layer, which: str) -> np.ndarray | None:
    p = getattr(layer.module, which, None)
    return None if p is None else p.detach().cpu().numpy().ravel()


def weight_table(layers: list[Layer]) -> pd.DataFrame:
    rows = []
    for layer in layers:
        w, b = _values(layer, "weight"), _values(layer, "bias")
        rows.append({"layer": layer.name, "module": layer.describe(), "weight shape": "x".join(
            str(d) for d in layer.module.weight.shape), "parameters": w.size + (0 if b is None else b.size),
            "weight mean": w.mean(), "weight std": w.std(), "bias mean": np.nan if b is None else b.mean(),
            "bias std": np.nan if b is None else b.std()})
    return pd.DataFrame(rows)


def histograms(layers: list[Layer], path: Path) -> Path:
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, ROW_INCHES * len(layers)), squeeze=False)
    for (ax_w, ax_b), layer in zip(axes, layers):
        panels = ((ax_w, "weight", "weights", "tab:blue"), (ax_b, "bias", "biases", "tab:orange"))
        for ax, which, plural, color in panels:
            values = _values(layer, which)
            if values is None:
                ax.text(0.5, 0.5, "no bias (a norm layer follows)", ha="center", va="center", transform=ax.transAxes)
                ax.set_yticks([])
            else:
                ax.hist(values, bins=HIST_BINS, color=color, alpha=0.85)
            ax.set_title(f"{layer.name} {plural} ({layer.path})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def filters(layer: Layer, path: Path) -> Path:
    """The first conv layer's kernels as images: colour where it reads RGB, grey otherwise; each scaled to
    its own range, so the pattern shows rather than the magnitude."""
    w = layer.module.weight.detach().cpu().numpy()[:MAX_FILTERS]
    w = w if w.shape[1] == 3 else w[:, :1]
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = (w - low) / np.where(span > 0, span, 1.0)
    titles = [f"filter {i}" for i in range(len(w))]
    k = "x".join(str(d) for d in w.shape[2:])
    return image_grid(scaled, titles, path, EXAMPLE_COLUMNS, f"{layer.name}: {len(w)} filters, {k}")


def maps_figure(layer: Layer, maps: np.ndarray, path: Path) -> Path:
    """One conv layer's output channels for one image (C, H, W), each in its own colour range."""
    shown = maps[:MAX_MAPS]
    fig, axes = grid(len(shown), EXAMPLE_COLUMNS, f"{layer.name} ({layer.describe()}): {maps.shape[0]} maps of "
                                                  f"{maps.shape[1]}x{maps.shape[2]}")
    for i, ax in enumerate(axes):
        ax.imshow(shown[i], cmap="viridis", interpolation="nearest")
        ax.set_title(f"map {i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save(fig, path)


def feature_maps(source: Source, layers: list[Layer], out: Path, seed: int) -> tuple[list[Path], int]:
    """The input image and each conv layer's maps of it; the image is a test image drawn at random."""
    index = int(np.random.default_rng(seed).integers(len(source.test)))
    image = source.test.images[index:index + 1]
    _, maps = forward(source.model, image, layers, flatten=False)
    fig, axes = grid(1, 1)
    show(axes[0], image[0], f"test image {index}\nclass {source.test.classes[source.test.labels[index]]}")
    paths = [save(fig, out / "feature_map_input.png")]
    paths += [maps_figure(layer, maps[layer.name][0], out / f"feature_maps_{layer.name}.png") for layer in layers]
    return paths, index


def weights_section(source: Source, out: Path, seed: int) -> Section:
    layers, convs = weighted_layers(source.net), conv_layers(source.net)
    table = weight_table(layers)
    table.to_csv(out / "weights.csv", index=False)
    s = Section("weights", "Weights, filters and feature maps",
                f"{len(layers)} layers ({len(convs)} conv, {len(layers) - len(convs)} FC), found in the network in "
                f"order; {int(table['parameters'].sum()):,} parameters in them.")
    s.attach(out / "weights.csv")
    s.table(table, "one row per layer; mean and standard deviation of its weights and biases")
    s.figure(histograms(layers, out / "weight_histograms.png"), "weights (left) and biases (right) of every layer")
    if not convs:
        s.figure(message(out / "first_layer_filters.png", "no conv layer"), "first-layer filters")
        return s
    s.figure(filters(convs[0], out / "first_layer_filters.png"), f"the filters of {convs[0].name}")
    paths, index = feature_maps(source, convs, out, seed)
    s.figure(paths[0], f"the image the feature maps below are of (test image {index})")
    for layer, path in zip(convs, paths[1:]):
        s.figure(path, f"feature maps of {layer.name}, after {layer.after or 'the convolution'}")
    return s
