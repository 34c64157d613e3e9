"""The whole report, in order: find the search in MLflow, run every stage, write the HTML and a summary,
and put all of it on the best trial's run under ``analysis/``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from tuner.analysis.classification import classification_sections
from tuner.analysis.curves import curves_section
from tuner.analysis.html import Section, render
from tuner.analysis.probes import probes_section
from tuner.analysis.progress import say
from tuner.analysis.robustness import robustness_section
from tuner.analysis.settings import Options
from tuner.analysis.source import Source, load_source
from tuner.analysis.tsne import choose_layer, tsne_section
from tuner.analysis.weights import weights_section
from tuner.errors import UserError

ARTIFACT_DIR = "analysis"     # on the best trial's MLflow run
MIN_IMAGES = {"probe_samples": 4, "tsne_points": 5, "robustness_images": 1}   # below these a step means nothing


def check(opts: Options) -> None:
    for name, least in MIN_IMAGES.items():
        if getattr(opts, name) < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(opts, name)}")


def overview(source: Source) -> Section:
    params = source.best.data.params
    s = Section("overview", "The best trial",
                f"Trial {source.trial_id} of search {source.parent.data.tags['tuner.search']}, chosen by the search "
                f"on validation; its settings as logged in MLflow.")
    s.table(pd.DataFrame({"setting": sorted(params), "value": [params[k] for k in sorted(params)]}))
    return s


def stages(source: Source, opts: Options, timings: dict[str, float]) -> list[Section]:
    """Every section, timed; the long ones (probes, t-SNE) print their own progress."""
    out, seed = opts.out, opts.seed
    plan = [("learning curves", lambda: curves_section(source, out)),
            ("classification and examples", lambda: classification_sections(source, out, seed)),
            ("weights, filters and feature maps", lambda: weights_section(source, out, seed)),
            ("linear probes", lambda: probes_section(source, out, opts.probe_samples, seed)),
            ("t-SNE", lambda: tsne_section(source, out, opts.tsne_points, opts.tsne_layer, seed)),
            ("robustness", lambda: robustness_section(source, out, opts.robustness_images, seed))]
    sections = [overview(source)]
    for i, (name, build) in enumerate(plan, 1):
        say(f"[{i}/{len(plan)}] {name}")
        start = time.perf_counter()
        built = build()
        sections += built if isinstance(built, list) else [built]
        timings[name] = round(time.perf_counter() - start, 2)
    return sections


def facts(source: Source, sections: list[Section]) -> dict[str, str]:
    numbers = {k: v for s in sections for k, v in s.facts.items()}
    tags = source.parent.data.tags
    return {"search": tags["tuner.search"], "space": tags.get("tuner.space", ""),
            "best trial": source.trial_id, "MLflow run": source.best.info.run_id, "model": source.model_uri,
            "dataset": f"{source.dataset}, {numbers['test_images']} test images",
            "test accuracy": f"{numbers['test_accuracy']:.4f}",
            "val_accuracy": f"{numbers.get('best_val_accuracy', float('nan')):.4f} (its best epoch)"}


def write(source: Source, opts: Options, sections: list[Section], timings: dict[str, float]) -> list[Path]:
    out = opts.out
    title = f"Best model of search {source.parent.data.tags['tuner.search']}"
    (out / "report.html").write_text(render(title, facts(source, sections), sections), encoding="utf-8")
    files = [f for s in sections for f in s.files] + [out / "report.html", out / "summary.json"]
    summary = {"search": opts.search, "experiment_id": source.parent.info.experiment_id,
               "search_run_id": source.parent.info.run_id, "best_run_id": source.best.info.run_id,
               "trial_id": source.trial_id, "model_uri": source.model_uri, "dataset": source.dataset,
               "sizes": {"probe_samples": opts.probe_samples, "tsne_points": opts.tsne_points,
                         "robustness_images": opts.robustness_images, "seed": opts.seed},
               **{k: v for s in sections for k, v in s.facts.items()},
               "seconds": timings, "files": [f.name for f in files]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return files


def log_to_mlflow(source: Source, files: list[Path]) -> None:
    run_id = source.best.info.run_id
    try:
        for path in files:
            source.client.log_artifact(run_id, str(path), ARTIFACT_DIR)
        source.client.set_tag(run_id, "tuner.analysis", f"{ARTIFACT_DIR}/report.html")
    except Exception as exc:   # the report on disk is whole; say in one line what MLflow did not take
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the report is in {files[-2].parent}, but MLflow did not take it: {first}") from None


def run_report(opts: Options) -> Path:
    """Write the report of the best model of ``opts.search``; returns the HTML's path."""
    check(opts)
    start = time.perf_counter()
    say(f"analysing the best model of search {opts.search} ({opts.tracking_uri})")
    source = load_source(opts)
    choose_layer(source.net, opts.tsne_layer)    # a wrong --tsne-layer fails now, not after the probes
    opts.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    sections = stages(source, opts, timings)
    timings["total"] = round(time.perf_counter() - start, 2)
    files = write(source, opts, sections, timings)
    if opts.log_to_mlflow:
        log_to_mlflow(source, files)
        say(f"MLflow: {len(files)} files under {ARTIFACT_DIR}/ of run {source.best.info.run_id} "
            f"(trial {source.trial_id})")
    say(f"report: {(opts.out / 'report.html').resolve()} ({timings['total']:.0f} s)")
    return opts.out / "report.html"
