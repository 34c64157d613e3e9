"""A t-SNE map of one layer's features of up to 5,000 test images, coloured by class (reports 000, 002)."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from tuner.analysis.figures import save
from tuner.analysis.html import Section
from tuner.analysis.layers import Layer, conv_layers, forward, probe_layers
from tuner.analysis.progress import say
from tuner.analysis.settings import LEGEND_CLASSES, TSNE_ITERATIONS, TSNE_PCA_DIMS, TSNE_PERPLEXITY
from tuner.analysis.source import Source, subset
from tuner.errors import UserError


def choose_layer(net, wanted: str | None) -> Layer:
    """``wanted`` by name; by default the last hidden FC layer (the features the classifier separates),
    else flatten, else the last conv layer."""
    probes, convs = probe_layers(net), conv_layers(net)
    if wanted is None:
        if len(probes) >= 3:
            return probes[-2]
        if probes or convs:
            return probes[0] if probes else convs[-1]
        raise UserError("the network has no conv or FC layer to map with t-SNE")
    by_name = {layer.name: layer for layer in probes + convs}
    if wanted not in by_name:
        raise UserError(f"--tsne-layer {wanted!r} is not a layer of this model; its layers: {', '.join(by_name)}")
    return by_name[wanted]


def embed(x: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE coordinates of the rows of x (after PCA, where x is wider than TSNE_PCA_DIMS)."""
    n = len(x)
    if x.shape[1] > TSNE_PCA_DIMS and n > TSNE_PCA_DIMS:
        x = PCA(TSNE_PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(TSNE_PERPLEXITY, max(1.0, (n - 1) / 3.0 - 1))   # sklearn needs it below n
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=TSNE_ITERATIONS,
                random_state=seed, verbose=1)     # verbose: sklearn's own progress lines
    return tsne.fit_transform(x.astype(np.float32))


def scatter(xy: np.ndarray, labels: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    k = len(classes)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "turbo")
    colors = [cmap(i / max(k - 1, 1)) if k > 20 else cmap(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(8, 7))
    for i, name in enumerate(classes):
        mask = labels == i
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colors[i], label=name, alpha=0.8, linewidths=0)
    if k <= LEGEND_CLASSES:
        ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return save(fig, path)


def tsne_section(source: Source, out: Path, points: int, layer_name: str | None, seed: int) -> Section:
    layer = choose_layer(source.net, layer_name)
    images = subset(source.test, points, seed)
    _, features = forward(source.model, images.images, [layer])
    x = features[layer.name]
    say(f"  t-SNE of {len(x)} test images, layer {layer.name} ({x.shape[1]} features) ...")
    start = time.perf_counter()
    xy = embed(x, seed)
    say(f"  t-SNE: done in {time.perf_counter() - start:.1f} s")
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": images.labels,
                  "class": [images.classes[i] for i in images.labels]}).to_csv(out / "tsne.csv", index=False)
    title = f"t-SNE of {layer.name} ({x.shape[1]} features), {len(x)} test images"
    s = Section("tsne", f"t-SNE of {layer.name}",
                f"Each point is a test image placed by t-SNE from its {layer.name} features ({layer.describe()}), "
                f"coloured by its true class: classes the layer separates form their own clusters.")
    s.attach(out / "tsne.csv")
    s.figure(scatter(xy, images.labels, images.classes, title, out / "tsne.png"), title)
    s.facts = {"tsne_layer": layer.name, "tsne_points": len(x)}
    return s
