"""What ``python -m tuner.run`` does, in order: check every input, then search, then conclude.

Everything that can be wrong with the input (space, data, tracking store, Ray address, resources) is
checked before the first trial starts; the tracking store before Ray is even started.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from tuner.data import TrialData, load_part, prepare_trial_data, resolve_data_dir
from tuner.errors import UserError
from tuner.pretrained import resolve_pretrained
from tuner.search import SMOKE, SearchOptions, build_tuner, effective_space, make_trainable, search_settings
from tuner.spaces import Space, load_space, parse_override
from tuner.timing import Timings
from tuner.tracking import Tracking

SETTINGS_FILE = "search_settings.json"   # beside the results: what the search is and where it logs


def check_name(opts: SearchOptions, resume: bool) -> None:
    from ray import tune

    exists = tune.Tuner.can_restore(opts.experiment_path)
    if exists and not resume:
        raise UserError(f"a search named {opts.name} already exists in {opts.storage_path}; add --resume to "
                        f"continue it, or choose another --name")
    if resume and not exists:
        raise UserError(f"no search named {opts.name} in {opts.storage_path} to resume; check --name and "
                        f"--storage-path")


def budget(args, space: Space) -> tuple[int, int, int | None]:
    """(trials, max epochs, training-image limit) from the space, the flags and --smoke."""
    if args.smoke:
        return SMOKE["num_samples"], SMOKE["max_epochs"], SMOKE["train_images"]
    for flag, value in (("--num-samples", args.num_samples), ("--max-epochs", args.max_epochs)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    return args.num_samples or space.num_samples, args.max_epochs or space.max_epochs, None


def make_tuner(args, space: Space, data: TrialData, opts: SearchOptions):
    from ray import tune

    if not args.resume:
        return build_tuner(space, data, opts)
    eff = effective_space(space, opts)
    return tune.Tuner.restore(opts.experiment_path, trainable=make_trainable(data, opts),
                              param_space=eff.grid_space() if opts.grid else eff.param_space(),
                              resume_unfinished=True, resume_errored=True)


def start_tracking(args, uri: str, client, space: Space, opts: SearchOptions) -> Tracking:
    """The search's MLflow run (created, or adopted on --resume) and the callback for its trials' runs."""
    from tuner.tracking import TrialRuns, start_search_run

    command = shlex.join(["python -m tuner.run", *sys.argv[1:]]) if sys.argv[0].endswith("run.py") else \
        shlex.join(sys.argv)
    tags = {"tuner.space": space.name, "tuner.command": command, "mlflow.note.content": space.description}
    settings = search_settings(space, opts)
    experiment = args.experiment or saved_settings(opts).get("experiment") or space.name
    experiment_id, run_id = start_search_run(client, uri, experiment, opts.name, opts.storage_path, tags, settings)
    client.log_artifact(run_id, str(space.path))
    client.log_dict(run_id, settings, SETTINGS_FILE)
    mine = {**settings, "tracking_uri": uri, "experiment": experiment, "search_run_id": run_id}
    (opts.outcome_dir / SETTINGS_FILE).write_text(json.dumps(mine, indent=2, default=str))
    callback = TrialRuns(uri, experiment_id, run_id, (space.grace_period, space.reduction_factor, space.max_epochs))
    return Tracking(uri, experiment_id, run_id, callback)


def storage_location(arg: str) -> str:
    """A URI (s3://...) as given; a local folder made absolute."""
    return arg if "://" in arg else str(Path(arg).expanduser().resolve())


def saved_settings(opts: SearchOptions) -> dict:
    path = opts.outcome_dir / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def tracking_uri_for(args, opts: SearchOptions) -> str:
    """The tracking URI; a resumed search keeps logging where it started."""
    from tuner.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if args.resume:
        started = saved_settings(opts).get("tracking_uri")
        if started and args.tracking_uri and args.tracking_uri != started:
            raise UserError(f"search {opts.name} logs to {started}; resume it with that --tracking-uri or without one")
        uri = started or uri
    return uri


def prepare(args: argparse.Namespace) -> tuple[Space, SearchOptions, TrialData, Path]:
    """The space, the search's options, its data and data dir: every input checked, nothing started."""
    from tuner.run import default_name

    space = load_space(args.space)
    overrides = dict(parse_override(o, space) for o in args.overrides)
    if args.resume and not args.name:
        raise UserError("--resume needs --name: the name of the search to continue")
    num_samples, max_epochs, limit = budget(args, space)
    data_dir = resolve_data_dir(args.data_dir)
    data = prepare_trial_data(space.dataset, data_dir, space.val_fraction, args.seed, args.download, limit)
    opts = SearchOptions(args.name or default_name(space.name), storage_location(args.storage_path), num_samples,
                         max_epochs, 1, 0, args.max_concurrent, args.seed, args.max_failures, args.grid, overrides)
    check_name(opts, args.resume)
    return space, opts, data, data_dir


def run_search(args: argparse.Namespace, timings: Timings | None = None) -> int:
    from tuner.cluster import check_multi_node, connect_ray, trial_resources
    from tuner.outcome import conclude
    from tuner.tracking import TrialRuns, check_tracking

    timings = timings if timings is not None else Timings()
    with timings.phase("setup"):
        space, opts, data, data_dir = prepare(args)
        uri = tracking_uri_for(args, opts)
        client = check_tracking(uri)                        # before Ray starts
        weights = resolve_pretrained(space, opts.overrides, uri, args.download)   # transfer: before Ray too
        opts.pretrained, opts.overrides = weights.state, {**opts.overrides, **weights.settings}
    with timings.phase("Ray start"):
        cluster = connect_ray(args.address)
    with timings.phase("setup"):
        opts.cpus_per_trial, opts.gpus_per_trial = trial_resources(args, space, cluster)
        check_multi_node(opts.storage_path, uri)
        eff = effective_space(space, opts)
        tracking = start_tracking(args, uri, client, eff, opts)
        opts.callbacks = [tracking.trial_runs]
    with timings.phase("search"):
        results = make_tuner(args, space, data, opts).fit()
    tracking.trial_runs = TrialRuns.live(tracking.parent_run_id) or tracking.trial_runs
    with timings.phase("conclusion"):
        test_set = load_part(space.dataset, data_dir, "test", args.download)
        code = conclude(results, eff, data, test_set, opts, tracking, args.log_top_k)
    print(f"{'wall time':>14}: {timings.line()}")
    if code == 0 and args.analyze:
        from tuner.analyze import analyze_search

        analyze_search(opts.name, uri, data_dir, args.experiment or space.name, args.download)
    return code
