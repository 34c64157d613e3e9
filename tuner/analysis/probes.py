"""Linear probes (reports 000, 002): how linearly separable the classes are in each layer's features.

For flatten and every FC layer, one linear SVM per class is trained one-vs-rest on the layer's features
of test images; as report 000 did, each is fitted on a class-balanced set (every image of the class and
as many drawn from the rest). The class is the argmax over the SVMs' decision values. Report 000 scored
the probes on the images they were fitted on; here half the probe images fit them and the other half
scores them (held-out accuracy, precision, recall), with the fit accuracy beside it for comparison.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tuner.analysis.figures import message, save
from tuner.analysis.html import Section
from tuner.analysis.layers import Layer, forward, probe_layers
from tuner.analysis.progress import say, step, tick
from tuner.analysis.settings import PROBE_FIT_SHARE, SVM_C, SVM_MAX_ITER
from tuner.analysis.source import Source, subset


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, score) indices: stratified where every class has two images, else plainly random."""
    idx = np.arange(len(labels))
    try:
        return train_test_split(idx, train_size=PROBE_FIT_SHARE, random_state=seed, stratify=labels)
    except ValueError:
        return train_test_split(idx, train_size=PROBE_FIT_SHARE, random_state=seed)


def balanced(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, 0/1 targets): every image of class k and as many others, drawn at random."""
    pos, neg = np.flatnonzero(labels == k), np.flatnonzero(labels != k)
    neg = rng.choice(neg, min(len(pos), len(neg)), replace=False)
    idx = np.concatenate([pos, neg])
    return idx, (labels[idx] == k).astype(int)


def fit_svms(x: np.ndarray, y: np.ndarray, classes: int, seed: int, name: str) -> list[LinearSVC | None]:
    rng, svms = np.random.default_rng(seed), []
    for k in range(classes):
        idx, target = balanced(y, k, rng)
        if len(np.unique(target)) < 2:      # a class absent from the fit half: it never wins the argmax
            svms.append(None)
        else:
            with warnings.catch_warnings():
                # A few unconverged iterations move a margin by little; the held-out scores tell the truth.
                warnings.simplefilter("ignore", ConvergenceWarning)
                svms.append(LinearSVC(C=SVM_C, max_iter=SVM_MAX_ITER, random_state=seed).fit(x[idx], target))
        tick(f"{name}: one-vs-rest SVMs", k + 1, classes)
    return svms


def predict(svms: list[LinearSVC | None], x: np.ndarray) -> np.ndarray:
    scores = np.column_stack([np.full(len(x), -np.inf) if s is None else s.decision_function(x) for s in svms])
    return scores.argmax(1)


def probe(name: str, x: np.ndarray, y: np.ndarray, fit: np.ndarray, score: np.ndarray, classes: int, seed: int):
    """(the layer's row, its per-class precision and recall) for features x."""
    scaler = StandardScaler().fit(x[fit])     # SVMs want standardised features (report 002 saw why)
    xf, xs = scaler.transform(x[fit]), scaler.transform(x[score])
    svms = fit_svms(xf, y[fit], classes, seed, name)
    predicted = predict(svms, xs)
    precision, recall, _, _ = precision_recall_fscore_support(y[score], predicted, labels=np.arange(classes),
                                                              zero_division=0)
    row = {"layer": name, "features": x.shape[1], "accuracy": float((predicted == y[score]).mean()),
           "precision": float(precision.mean()), "recall": float(recall.mean()),
           "fit accuracy": float((predict(svms, xf) == y[fit]).mean())}
    return row, precision, recall


def accuracy_figure(table: pd.DataFrame, chance: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(table)), 3.2))
    ax.bar(table["layer"], table["accuracy"], color="tab:blue", label="held-out")
    ax.plot(table["layer"], table["fit accuracy"], "o--", color="tab:orange", label="on the fit images")
    ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probe accuracy")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return save(fig, path)


def run_probes(source: Source, layers: list[Layer], samples: int, seed: int):
    images = subset(source.test, samples, seed)
    fit, score = split(images.labels, seed)
    say(f"  probes: {len(layers)} layers, {len(fit)} images to fit, {len(score)} to score")
    _, features = forward(source.model, images.images, layers)
    rows, per_class = [], []
    for i, layer in enumerate(layers, 1):
        with step(f"probe {i}/{len(layers)}: {layer.name} ({features[layer.name].shape[1]} features)"):
            row, precision, recall = probe(layer.name, features[layer.name], images.labels, fit, score,
                                           len(images.classes), seed)
        rows.append({**row, "module": layer.describe()})
        per_class.append(pd.DataFrame({"layer": layer.name, "class": images.classes, "precision": precision,
                                       "recall": recall}))
    return pd.DataFrame(rows), pd.concat(per_class, ignore_index=True), len(fit)


def probes_section(source: Source, out: Path, samples: int, seed: int) -> Section:
    layers = probe_layers(source.net)
    s = Section("probes", "Linear probes per layer",
                "One-vs-rest linear SVMs on each layer's features, each fitted on a class-balanced set (report "
                "000); accuracy, macro precision and macro recall on held-out test images.")
    if not layers:
        s.note("The network has no FC layer to probe.")
        s.figure(message(out / "probes.png", "no FC layer"), "probe accuracy per layer")
        return s
    table, per_class, fitted = run_probes(source, layers, samples, seed)
    table.to_csv(s.attach(out / "probes.csv"), index=False)
    per_class.to_csv(s.attach(out / "probes_per_class.csv"), index=False)
    s.table(table, f"one row per layer; SVMs fitted on {fitted} test images, scored on the others")
    s.figure(accuracy_figure(table, 1 / len(source.test.classes), out / "probes.png"), "probe accuracy per layer")
    wide = per_class.pivot(index="class", columns="layer", values=["precision", "recall"])
    wide = wide.reindex(columns=[(m, layer.name) for m in ("precision", "recall") for layer in layers])
    wide.columns = [f"{m} {layer}" for m, layer in wide.columns]
    s.table(wide.reindex(source.test.classes).reset_index(), "held-out precision and recall per class and layer")
    s.facts = {f"probe_accuracy_{r['layer']}": r["accuracy"] for r in table.to_dict("records")}
    return s
