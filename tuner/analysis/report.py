"""The whole report, in order: find the search in MLflow, run the search's stages and then the model's, write
the HTML and a summary, and put them on the search's run (its part) and the studied trial's run (the model's
part), each under ``analysis/``. ``--search-only`` writes the search's part alone."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd

from tuner.analysis.html import Section, render
from tuner.analysis.progress import say
from tuner.analysis.search_report import search_sections
from tuner.analysis.settings import Options
from tuner.analysis.source import Source, find_search, load_source, trial_runs
from tuner.analysis.trials import SearchRecord, load_record
from tuner.errors import UserError
from tuner.guards import redact

ARTIFACT_DIR = "analysis"     # on the search's MLflow run and the studied trial's
MIN_IMAGES = {"probe_samples": 4, "tsne_points": 5, "robustness_images": 1}   # below these a step means nothing


def check(opts: Options) -> None:
    for name, least in MIN_IMAGES.items():
        if getattr(opts, name) < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(opts, name)}")
    if opts.model != "best" and not re.fullmatch(r"pareto-[1-9][0-9]*", opts.model):
        raise UserError(f"--model {opts.model!r}: use best, or pareto-K for the K-th model of a multi-objective "
                        f"search's Pareto front (pareto-1, pareto-2, ...)")
    if opts.search_only and opts.model != "best":
        raise UserError("--search-only studies no model; drop --model, or --search-only to study that model")


def model_label(opts: Options) -> str:
    return "best model" if opts.model == "best" else f"model {opts.model}"


def overview(source: Source, opts: Options) -> Section:
    params = source.best.data.params
    chosen = "chosen by the search on validation" if opts.model == "best" else f"{opts.model} of its Pareto front"
    s = Section("overview", "The best trial" if opts.model == "best" else f"The trial of {opts.model}",
                f"Trial {source.trial_id} of search {source.parent.data.tags['tuner.search']}, {chosen}; its "
                f"settings as logged in MLflow.")
    s.table(pd.DataFrame({"setting": sorted(params), "value": [params[k] for k in sorted(params)]}))
    return s


def stages(source: Source, opts: Options, timings: dict[str, float]) -> list[Section]:
    """Every section of the model's part, timed; the long ones (probes, t-SNE) print their own progress."""
    # Imported here: the search's part alone (--search-only) needs none of them (torchvision, scikit-learn).
    from tuner.analysis.classification import classification_sections
    from tuner.analysis.curves import curves_section
    from tuner.analysis.probes import probes_section
    from tuner.analysis.robustness import robustness_section
    from tuner.analysis.tsne import tsne_section
    from tuner.analysis.weights import weights_section

    out, seed = opts.out, opts.seed
    plan = [("learning curves", lambda: curves_section(source, out)),
            ("classification and examples", lambda: classification_sections(source, out, seed)),
            ("weights, filters and feature maps", lambda: weights_section(source, out, seed)),
            ("linear probes", lambda: probes_section(source, out, opts.probe_samples, seed)),
            ("t-SNE", lambda: tsne_section(source, out, opts.tsne_points, opts.tsne_layer, seed)),
            ("robustness", lambda: robustness_section(source, out, opts.robustness_images, seed))]
    sections = [overview(source, opts)]
    for i, (name, build) in enumerate(plan, 1):
        say(f"[{i}/{len(plan)}] {name}")
        start = time.perf_counter()
        built = build()
        sections += built if isinstance(built, list) else [built]
        timings[name] = round(time.perf_counter() - start, 2)
    return sections


def facts(record: SearchRecord, source: Source | None, sections: list[Section]) -> dict[str, str]:
    numbers = {k: v for s in sections for k, v in s.facts.items()}
    tags = record.parent.data.tags
    out = {"search": record.name, "space": tags.get("tuner.space", ""), "trials": str(len(record.trials)),
           "search run": record.parent.info.run_id}
    if source is None:
        return out
    return {**out, "trial": source.trial_id, "MLflow run": source.best.info.run_id, "model": source.model_uri,
            "dataset": f"{source.dataset}, {numbers['test_images']} test images",
            "test accuracy": f"{numbers['test_accuracy']:.4f}",
            "val_accuracy": f"{numbers.get('best_val_accuracy', float('nan')):.4f} (its best epoch)"}


def files_of(sections: list[Section]) -> list[Path]:
    return [f for s in sections for f in s.files]


def write(record: SearchRecord, source: Source | None, opts: Options, searched: list[Section],
          studied: list[Section], timings: dict[str, float]) -> None:
    out, sections = opts.out, searched + studied
    title = f"Search {record.name}" + ("" if source is None else f" and its {model_label(opts)}")
    (out / "report.html").write_text(render(title, facts(record, source, sections), sections), encoding="utf-8")
    summary = {"search": opts.search, "experiment_id": record.parent.info.experiment_id,
               "search_run_id": record.parent.info.run_id, **{k: v for s in sections for k, v in s.facts.items()},
               "seconds": timings, "search_files": [f.name for f in files_of(searched)]}
    if source is not None:
        summary.update({"model": opts.model, "best_run_id": source.best.info.run_id, "trial_id": source.trial_id,
                        "model_uri": source.model_uri, "dataset": source.dataset,
                        "sizes": {"probe_samples": opts.probe_samples, "tsne_points": opts.tsne_points,
                                  "robustness_images": opts.robustness_images, "seed": opts.seed},
                        "model_files": [f.name for f in files_of(studied)]})
    summary["files"] = [f.name for f in files_of(sections)] + ["report.html", "summary.json"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def log_files(client, run_id: str, files: list[Path], out: Path) -> None:
    """Files and the report onto one run, under analysis/."""
    for path in [*files, out / "report.html", out / "summary.json"]:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    client.set_tag(run_id, "tuner.analysis", f"{ARTIFACT_DIR}/report.html")


def log_to_mlflow(record: SearchRecord, source: Source | None, opts: Options, searched: list[Section],
                  studied: list[Section]) -> None:
    try:
        log_files(record.client, record.parent.info.run_id, files_of(searched), opts.out)
        if source is not None:
            log_files(record.client, source.best.info.run_id, files_of(studied), opts.out)
    except Exception as exc:   # the report on disk is whole; say in one line what MLflow did not take
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the report is in {opts.out}, but MLflow did not take it: {first}") from None


def load(opts: Options) -> tuple[SearchRecord, Source | None]:
    """The search's record and, unless --search-only, the model's source; every input checked first."""
    if opts.search_only:
        from tuner.store import check_tracking

        client = check_tracking(opts.tracking_uri)
        parent = find_search(client, opts.search, opts.experiment)
        return load_record(client, parent, trial_runs(client, parent)), None
    from tuner.analysis.tsne import choose_layer

    source = load_source(opts)
    choose_layer(source.net, opts.tsne_layer)    # a wrong --tsne-layer fails now, not after the probes
    return load_record(source.client, source.parent, source.trials), source


def run_report(opts: Options) -> Path:
    """Write the report of search ``opts.search`` (and of its best model, or ``opts.model``); returns the HTML's
    path."""
    check(opts)
    start = time.perf_counter()
    what = "" if opts.search_only else f" and its {model_label(opts)}"
    say(f"analysing search {opts.search}{what} ({redact(opts.tracking_uri)})")
    record, source = load(opts)
    timings = {"loading from MLflow": round(time.perf_counter() - start, 2)}
    opts.out.mkdir(parents=True, exist_ok=True)
    searched = search_sections(record, opts.out, opts.seed, timings)
    studied = [] if source is None else stages(source, opts, timings)
    timings["total"] = round(time.perf_counter() - start, 2)
    write(record, source, opts, searched, studied, timings)
    if opts.log_to_mlflow:
        log_to_mlflow(record, source, opts, searched, studied)
        where = "the search's run" + ("" if source is None else f" and trial {source.trial_id}'s")
        say(f"MLflow: the report under {ARTIFACT_DIR}/ of {where}")
    say(f"report: {(opts.out / 'report.html').resolve()} ({timings['total']:.0f} s)")
    return opts.out / "report.html"
