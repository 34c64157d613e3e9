"""The best model on the whole test set: precision, recall and F1 per class, the confusion matrix, and
grids of correctly and wrongly classified images (report 003)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tuner.analysis.figures import image_grid, save
from tuner.analysis.html import Section
from tuner.analysis.layers import forward
from tuner.analysis.settings import ANNOTATE_CLASSES, EXAMPLE_COLUMNS, EXAMPLES
from tuner.analysis.source import Source
from tuner.data import ImageSet


def per_class(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(len(classes)), zero_division=0)
    return pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})


def confusion_figure(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    k = len(classes)
    side = min(12.0, 2.0 + 0.5 * k)    # inches: readable for 10 classes, bounded for 100
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= ANNOTATE_CLASSES:
        ticks = np.arange(k)
        ax.set_xticks(ticks, classes, rotation=45, ha="right")
        ax.set_yticks(ticks, classes)
        for (i, j), n in np.ndenumerate(matrix):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                        color="white" if n > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {matrix.sum()} test images")
    return save(fig, path)


def examples(test: ImageSet, predicted: np.ndarray, correct: bool, path: Path, seed: int) -> Path:
    """Up to EXAMPLES images the model got right (or wrong), drawn at random (seeded)."""
    idx = np.flatnonzero((predicted == test.labels) == correct)
    idx = np.sort(np.random.default_rng(seed).choice(idx, min(EXAMPLES, len(idx)), replace=False))
    names = test.classes
    titles = [f"true {names[test.labels[i]]}\npred {names[predicted[i]]}" for i in idx]
    what = "correctly" if correct else "wrongly"
    return image_grid(test.images[idx], titles, path, EXAMPLE_COLUMNS, f"{what} classified test images",
                      ["tab:green" if correct else "tab:red"] * len(idx))


def classification_sections(source: Source, out: Path, seed: int) -> list[Section]:
    """The per-class scores and the examples, from one pass over the test set."""
    test = source.test
    logits, _ = forward(source.model, test.images)
    predicted = logits.argmax(1)
    table = per_class(test.labels, predicted, test.classes)
    table.to_csv(out / "classification.csv", index=False)
    matrix = confusion_matrix(test.labels, predicted, labels=np.arange(len(test.classes)))
    pd.DataFrame(matrix, index=test.classes, columns=test.classes).to_csv(out / "confusion_matrix.csv")
    accuracy = float((predicted == test.labels).mean())
    s = Section("classification", "Test set: per-class scores and confusion matrix",
                f"The best model on all {len(test)} test images of {source.dataset}: accuracy {accuracy:.4f}, "
                f"macro F1 {table['f1'].mean():.4f} (scikit-learn).")
    s.attach(out / "classification.csv")
    s.attach(out / "confusion_matrix.csv")
    s.table(table, "precision, recall and F1 per class; support is the number of test images of the class")
    s.figure(confusion_figure(matrix, test.classes, out / "confusion_matrix.png"), "rows: true class; columns: "
             "predicted class")
    s.facts = {"test_accuracy": accuracy, "macro_f1": float(table["f1"].mean()), "test_images": len(test)}
    return [s, examples_section(source, predicted, out, seed)]


def examples_section(source: Source, predicted: np.ndarray, out: Path, seed: int) -> Section:
    wrong = int((predicted != source.test.labels).sum())
    s = Section("examples", "Correctly and wrongly classified examples",
                f"Test images with their true and predicted classes, drawn at random: {len(predicted) - wrong} are "
                f"classified correctly, {wrong} wrongly.")
    s.figure(examples(source.test, predicted, True, out / "correct_examples.png", seed), "correctly classified")
    s.figure(examples(source.test, predicted, False, out / "wrong_examples.png", seed), "wrongly classified")
    return s
