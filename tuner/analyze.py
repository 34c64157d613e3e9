"""python -m tuner.analyze --search NAME: a report on a finished search and its best model.

The search's part: which settings mattered (Optuna's importance evaluators), every trial in parallel
coordinates, the score against the most important settings, what the search spent (ASHA's rungs against
FIFO, time per trial, failures), and what the scores cost in parameters and latency (Pareto fronts). The
model's part: learning curves, per-class scores and the confusion matrix, classified examples, weight
histograms, filters and feature maps, linear probes per layer, a t-SNE map and robustness to transforms.
Written to --out as PNGs, CSVs and one self-contained report.html, and logged under analysis/ on the search's
MLflow run (its part) and the studied trial's (the model's). Bad input (no such search, no logged model,
missing data, a Pareto model of a single-objective search) is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# As in tuner.run: MLflow calls that fail fast instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tuner.analysis.settings import Options, default_out  # noqa: E402
from tuner.cli import Help, exit_code  # noqa: E402

DEFAULTS = Options("", "", Path("."), Path("."))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuner.analyze", description=__doc__.splitlines()[0],
                                formatter_class=Help)
    p.add_argument("--search", required=True, help="the search's name, as tuner.run printed it (--name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the sqlite "
                                          "store mlflow/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment, where the search's name is in more than one "
                                        "(default: any)")
    p.add_argument("--data-dir", help="dataset folder (default: $TUNER_DATA_DIR, else ./data)")
    p.add_argument("--download", action="store_true", help="download a missing dataset with torchvision")
    p.add_argument("--out", type=Path, help="the report's folder (default: analysis/SEARCH)")
    p.add_argument("--probe-samples", type=int, default=DEFAULTS.probe_samples,
                   help="test images for the linear probes, half to fit them and half to score them")
    p.add_argument("--tsne-points", type=int, default=DEFAULTS.tsne_points, help="test images in the t-SNE map")
    p.add_argument("--tsne-layer", help="layer the t-SNE map is of: flatten, fc1, fc2, ..., conv1, ... (default: "
                                        "the last hidden FC layer, else flatten)")
    p.add_argument("--robustness-images", type=int, default=DEFAULTS.robustness_images,
                   help="test images each robustness transform is applied to")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seeds every random choice of the report")
    p.add_argument("--search-only", action="store_true", help="the search's part only: no model is loaded and no "
                                                              "data is read")
    p.add_argument("--model", default=DEFAULTS.model, metavar="best|pareto-K",
                   help="the model studied: the best, or the K-th of a multi-objective search's Pareto front")
    p.add_argument("--no-mlflow", action="store_true", help="write the report to --out only, not to MLflow")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    from tuner.data import resolve_data_dir
    from tuner.guards import check_name
    from tuner.limits import check_flags
    from tuner.store import resolve_tracking_uri

    check_flags(args)
    check_name("--search", args.search)          # it names the report's folder and an MLflow filter
    if args.experiment is not None:
        check_name("--experiment", args.experiment)
    return Options(args.search, resolve_tracking_uri(args.tracking_uri), resolve_data_dir(args.data_dir),
                   args.out or default_out(args.search), args.experiment, args.download, args.probe_samples,
                   args.tsne_points, args.tsne_layer, args.robustness_images, args.seed, not args.no_mlflow,
                   args.search_only, args.model)


def analyze_search(search: str, tracking_uri: str, data_dir: Path, experiment: str | None = None,
                   download: bool = False) -> Path:
    """The report of a search that just finished and its best model (``tuner.run --analyze``), at the default
    sizes."""
    from tuner.analysis.report import run_report

    return run_report(Options(search, tracking_uri, data_dir, default_out(search), experiment, download))


def main(argv=None) -> int:
    args = parse_args(argv)

    def report() -> int:
        from tuner.analysis.report import run_report

        run_report(options(args))
        return 0

    return exit_code(report, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
