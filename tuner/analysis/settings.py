"""Every size and setting of the report, in one place.

The defaults keep a full report of an MNIST model to about a minute on two idle CPU cores: t-SNE of 5,000
points takes half of it, robustness on 10,000 images a third, the probes and the rest seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Options:
    """What ``python -m tuner.analyze`` was asked for (its flags, resolved)."""

    search: str                              # the search's name (MLflow tag tuner.search)
    tracking_uri: str
    data_dir: Path
    out: Path                                # the report's folder on disk
    experiment: str | None = None            # MLflow experiment, where the name is in more than one
    download: bool = False                   # fetch a missing dataset with torchvision
    probe_samples: int = 5000                # test images the linear probes use (half fit, half score)
    tsne_points: int = 5000                  # test images in the t-SNE map (report 000 used 5,000)
    tsne_layer: str | None = None            # a probe layer's name; None: the last hidden FC layer
    robustness_images: int = 10000           # test images each transform is applied to
    seed: int = 0                            # every random choice of the report (subsets, transforms)
    log_to_mlflow: bool = True               # artifacts onto the search's run and the studied trial's run
    search_only: bool = False                # the search's part only (no model, no data needed)
    model: str = "best"                      # the model studied: best, or pareto-K of a multi-objective search


# ---- inference ----------------------------------------------------------------------------------------------
BATCH_SIZE = 1000                # images per forward pass (features of 1,000 MNIST images: a few MB)

# ---- figures ------------------------------------------------------------------------------------------------
DPI = 100                        # pixels per inch of every PNG
EXAMPLES = 24                    # correctly and wrongly classified images shown, each
EXAMPLE_COLUMNS = 8              # images per row of an example grid
MAX_FILTERS = 64                 # first-layer filters drawn at most
MAX_MAPS = 64                    # channels of one conv layer's feature maps drawn at most
ANNOTATE_CLASSES = 20            # confusion matrices of at most this many classes get counts in the cells
LEGEND_CLASSES = 20              # t-SNE maps of at most this many classes get a legend

# ---- linear probes (report 000: one-vs-rest linear SVMs, each on a class-balanced set) ------------------------
PROBE_FIT_SHARE = 0.5            # share of the probe images the SVMs are fitted on; the rest scores them
SVM_C = 1.0                      # LinearSVC's inverse regularisation strength
SVM_MAX_ITER = 5000              # iterations of liblinear at most (standardised features converge well before)

# ---- t-SNE ----------------------------------------------------------------------------------------------------
TSNE_PERPLEXITY = 30.0           # sklearn's default; lowered for tiny sets (it must stay below n / 3)
TSNE_PCA_DIMS = 50               # features are reduced to this many PCA components first (the usual practice)
TSNE_ITERATIONS = 1000           # gradient steps

# ---- robustness (report 001's transforms; its values are not stated, these are common ones) ------------------
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}   # factors; hue in turns
JITTER_GRAY = ("brightness", "contrast")   # what ColorJitter can do to a one-channel image
BLUR_KERNEL = 5                  # pixels, GaussianBlur's kernel side
BLUR_SIGMA = (0.1, 2.0)          # pixels, torchvision's default range
PERSPECTIVE_DISTORTION = 0.5     # RandomPerspective's distortion_scale (0: none, 1: the most)
ROTATION_DEGREES = 45.0          # RandomRotation(45): uniform in [-45, 45] degrees
TRANSLATE = (0.2, 0.2)           # RandomAffine: shifts up to this share of the width, height
SCALE = (0.7, 1.3)               # RandomAffine: zoom factors
ROBUSTNESS_EXAMPLES = 8          # images shown under every transform


def default_out(search: str) -> Path:
    return Path("analysis") / search
