"""What ``python -m tuner.run`` does, in order: check every input, then search, then conclude.

Everything that can be wrong with the input (space, data, tracking store, Ray address, resources) is
checked before the first trial starts; the tracking store before Ray is even started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
from pathlib import Path

from tuner.asha import Floor
from tuner.data import TrialData, check_test_files, load_part, prepare_trial_data, resolve_data_dir
from tuner.errors import UserError
from tuner.guards import DriverLock, check_name, prepare_storage, redact, redact_all, unique_name
from tuner.limits import check_flags
from tuner.pretrained import resolve_pretrained
from tuner.search import (SMOKE, SearchOptions, build_tuner, effective_space, make_trainable, outcome_folder,
                          resume_command, search_floor, search_settings)
from tuner.spaces import Space, load_space, parse_override
from tuner.stopping import GracefulStop
from tuner.timing import Timings
from tuner.tracking import Tracking

SETTINGS_FILE = "search_settings.json"   # beside the results: what the search is and where it logs
# The flags that define a search (its data split, its trials, their settings): --resume takes them from the
# search's settings file, so that it continues the search that was started, not a new one over the old.
DEFINING_FLAGS = {"seed": "--seed", "num_samples": "--num-samples", "max_epochs": "--max-epochs",
                  "overrides": "--set", "grid": "--grid", "smoke": "--smoke"}
# Flags Ray keeps in the search's saved state, which Tuner.restore takes back: a new value would not apply.
RESTORED_FLAGS = {"max_failures": "--max-failures", "max_concurrent": "--max-concurrent"}
ADOPTED_FLAGS = {**DEFINING_FLAGS, **RESTORED_FLAGS}


def check_exists(opts: SearchOptions, resume: bool) -> None:
    from ray import tune

    exists = tune.Tuner.can_restore(opts.experiment_path)
    if exists and not resume:
        raise UserError(f"a search named {opts.name} already exists in {redact(opts.storage_path)}; add --resume "
                        f"to continue it, or choose another --name")
    if resume and not exists:
        raise UserError(f"no search named {opts.name} in {redact(opts.storage_path)} to resume; check --name and "
                        f"--storage-path")


def started_flags(args) -> dict | None:
    """The flags the search ``args.name`` was started with, from its settings file; None when there is none
    (a new search, or one from before the file held them)."""
    return (started_settings(args) or {}).get("flags")


def started_settings(args) -> dict | None:
    """The settings file of the search ``args.name`` on --resume; None for a new search or none found."""
    if not (args.resume and args.name):
        return None
    path = outcome_folder(storage_location(args.storage_path), args.name) / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as exc:
        settings = exc
    if settings is None or isinstance(settings, dict):
        return settings
    raise UserError(f"{path} cannot be read ({type(settings).__name__}); it holds the flags search {args.name} "
                    f"was started with: resume with them given again after restoring or removing it")


def adopt_started_flags(args) -> None:
    """On --resume, each defining flag not given takes the value the search started with; one given with
    another value is refused (it would change the data split or the trials of a search half run)."""
    started = started_flags(args)
    for key, flag in ADOPTED_FLAGS.items() if started else ():
        given, then = getattr(args, key), started.get(key, getattr(args, key))    # a key it lacks: as given
        if not_given(given):
            setattr(args, key, then)
        elif given != then and not_given(then):
            raise UserError(f"search {args.name} was started without {flag}; resume it without {flag}")
        elif given != then:
            raise UserError(f"search {args.name} was started with {as_typed(flag, then)}; resume it with the same or "
                            f"without {flag}")
    args.seed = 0 if args.seed is None else args.seed
    args.max_failures = 1 if args.max_failures is None else args.max_failures


def started_space(args, started: dict) -> str:
    """On --resume without --space, the space file the search was started with (``started``: its settings
    file); a search from before the file named it: quickstart, the default."""
    path = started.get("space_file")
    if path and not Path(path).is_file():     # e.g. a Ray Job's copy, in a folder on the cluster
        raise UserError(f"search {args.name} was started with the space file {path}, which is not there; resume "
                        f"it with --space naming that file (or its copy)")
    return path or "quickstart"


def check_same_space(args, space: Space, started: dict) -> None:
    """A resumed search's space file must hold the text it was started with: Ray checks only the names of the
    searched settings, so edited ranges or fixed values would continue the search as another one."""
    then = started.get("space_sha256")
    if then and then != space_digest(space):
        raise UserError(f"search {args.name} was started with another text of its space "
                        f"({started.get('space_file')}); resume it with that file as it was")


def check_resumed_experiment(args, started: dict) -> None:
    """A resumed search's trials go on logging under its run, in the experiment it started in."""
    then = started.get("experiment")
    if then and args.experiment and args.experiment != then:
        raise UserError(f"search {args.name} logs to experiment {then}; resume it with that --experiment or "
                        f"without one")


def space_digest(space: Space) -> str:
    return hashlib.sha256(space.path.read_bytes()).hexdigest()


def not_given(value) -> bool:
    return value is None or value is False or value == []     # 0 is a value, not "not given"


def as_typed(flag: str, value) -> str:
    """A flag's value as typed on the command line: ``--set a=1 --set b=2``, ``--grid``, ``--seed 3``."""
    if isinstance(value, list):
        return " ".join(f"{flag} {v}" for v in value)
    return flag if value is True else f"{flag} {value}"


def budget(args, space: Space, overrides: dict) -> tuple[int, int, int | None]:
    """(trials, max epochs, training-image limit) from the space, the flags and --smoke; --grid runs each
    combination of the choices once (under --smoke too, each for smoke's epoch and images)."""
    grid = grid_points(space, overrides) if args.grid else None
    if grid and args.num_samples:
        raise UserError(f"--grid runs each of the {grid} combinations of the space's choices once; leave out "
                        f"--num-samples")
    if args.smoke:
        return grid or SMOKE["num_samples"], SMOKE["max_epochs"], SMOKE["train_images"]
    return grid or args.num_samples or space.num_samples, args.max_epochs or space.max_epochs, None


def grid_points(space: Space, overrides: dict) -> int:
    """How many trials --grid runs: every combination of the choices the command line leaves searched."""
    return math.prod(len(values) for key, (kind, values) in space.search.items()
                     if kind == "choice" and key not in overrides)


def make_tuner(args, space: Space, data: TrialData, opts: SearchOptions):
    from ray import tune

    if not args.resume:
        return build_tuner(space, data, opts)
    eff = effective_space(space, opts)
    return tune.Tuner.restore(opts.experiment_path, trainable=make_trainable(data, opts, eff),
                              param_space=eff.grid_space() if opts.grid else eff.param_space(),
                              resume_unfinished=True, resume_errored=True)


def start_tracking(args, uri: str, client, space: Space, opts: SearchOptions, datasets: list,
                   floor: Floor | None = None) -> Tracking:
    """The search's MLflow run (created, or adopted on --resume) and the callback for its trials' runs;
    ``datasets``: the training and validation splits, on the search's run and every trial's; ``floor``:
    the search's chance floor, named in the end reason of a trial ASHA stopped at it."""
    from tuner.tracking import TrialRuns, log_datasets, start_search_run

    command = "python -m tuner.run " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("run.py") else \
        shlex.join(sys.argv)
    tags = {"tuner.space": space.name, "tuner.command": redact(command), "mlflow.note.content": space.description}
    settings = redact_all(search_settings(space, opts))       # no credentials in params, tags or files
    experiment = experiment_name(args, opts, space)
    experiment_id, run_id = start_search_run(client, uri, experiment, opts.name, redact(opts.storage_path), tags,
                                             settings)
    client.log_artifact(run_id, str(space.path))
    client.log_dict(run_id, settings, SETTINGS_FILE)
    log_datasets(client, run_id, datasets)
    mine = {**settings, "tracking_uri": redact(uri), "experiment": experiment, "search_run_id": run_id,
            "flags": redact_all({key: getattr(args, key) for key in ADOPTED_FLAGS}),
            "space_sha256": space_digest(space)}
    (opts.outcome_dir / SETTINGS_FILE).write_text(json.dumps(mine, indent=2, default=str))
    callback = TrialRuns(uri, experiment_id, run_id, (space.grace_period, space.reduction_factor, space.max_epochs),
                         datasets, floor, space.stopper)
    return Tracking(uri, experiment_id, run_id, callback)


def experiment_name(args, opts: SearchOptions, space: Space) -> str:
    """--experiment, else (on --resume) the experiment the search started in, else the space's name."""
    return args.experiment or saved_settings(opts).get("experiment") or space.name


def storage_location(arg: str) -> str:
    """A URI (s3://...) as given; a local folder made absolute."""
    return arg if "://" in arg else str(Path(arg).expanduser().resolve())


def saved_settings(opts: SearchOptions) -> dict:
    path = opts.outcome_dir / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def tracking_uri_for(args, opts: SearchOptions) -> str:
    """The tracking URI; a resumed search keeps logging where it started. The search's files hold it
    without credentials, so a URI with credentials is given again (flag or environment) to resume."""
    from tuner.store import absolute_sqlite, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    started = saved_settings(opts).get("tracking_uri") if args.resume else None
    started = started and absolute_sqlite(started)     # one stored as given, relative, before they were made absolute
    if not started or redact(uri) == started:
        return uri
    if args.tracking_uri:
        raise UserError(f"search {opts.name} logs to {started}; resume it with that --tracking-uri or without one")
    if "***" in started:
        raise UserError(f"search {opts.name} logs to {started}, whose credentials are not stored; resume it with "
                        f"that --tracking-uri (or $MLFLOW_TRACKING_URI) in full")
    return started


def check_inputs(args: argparse.Namespace) -> tuple[Space, dict]:
    """The flags, the space, the names and the overrides, checked without touching anything."""
    check_flags(args)
    if args.resume and not args.name:
        raise UserError("--resume needs --name: the name of the search to continue")
    if args.analyze and args.log_top_k == 0:
        raise UserError("--analyze reports on the best trial's logged model and --log-top-k 0 logs none; drop one")
    for what, name in (("--name", args.name), ("--experiment", args.experiment)):
        if name is not None:
            check_name(what, name)
    adopt_started_flags(args)     # after the name check: the name is part of the settings file's path
    started = started_settings(args) or {}
    space = load_space(args.space or started_space(args, started))
    check_same_space(args, space, started)
    check_resumed_experiment(args, started)
    check_name("the space file's name (it names the MLflow experiment and model)", space.name)
    return space, dict(parse_override(o, space) for o in args.overrides)


def lock_path(opts: SearchOptions) -> Path:
    """Beside the search's folder; for object storage, beside its local outcome folder (this machine's
    drivers only: best effort)."""
    folder = Path("ray_results").resolve() if opts.remote_storage else Path(opts.storage_path)
    return folder / f".{opts.name}.lock"


def prepare(args: argparse.Namespace) -> tuple[Space, SearchOptions, TrialData, Path]:
    """The space, the search's options, its data and data dir: every input checked, nothing started."""
    space, overrides = check_inputs(args)
    num_samples, max_epochs, limit = budget(args, space, overrides)
    data_dir = resolve_data_dir(args.data_dir)
    data = prepare_trial_data(space.dataset, data_dir, space.val_fraction, args.seed, args.download, limit)
    check_test_files(space.dataset, data_dir, args.download)
    opts = SearchOptions(args.name or unique_name(space.name), storage_location(args.storage_path), num_samples,
                         max_epochs, 1, 0, args.max_concurrent, args.seed, args.max_failures, args.grid, overrides)
    if not opts.remote_storage:
        prepare_storage(Path(opts.storage_path), Path(opts.experiment_path))
    return space, opts, data, data_dir



def run_search(args: argparse.Namespace, timings: Timings | None = None) -> int:
    from tuner.console import quiet_libraries

    quiet_libraries(args.verbose)
    timings = timings if timings is not None else Timings()
    with timings.phase("setup"):
        space, opts, data, data_dir = prepare(args)
    with DriverLock(lock_path(opts), opts.name):     # one driver per search, until this one ends
        return search_and_conclude(args, space, opts, data, data_dir, timings)


def stopped(tracking: Tracking, opts: SearchOptions, started_here: bool) -> int:
    """A search stopped by a signal (Ctrl-C, SIGTERM, Ray Jobs' stop): Tune saved its state; its MLflow runs
    that were running are closed as KILLED, and nothing is concluded."""
    from tuner.cluster import stop_ray_beside
    from tuner.tracking import close_interrupted_runs

    ray_stopping = stop_ray_beside(started_here)
    close_interrupted_runs(tracking.trial_runs.records(), tracking.parent_run_id)
    ray_stopping.join()
    print(f"stopped: search {opts.name} is saved; continue it with {resume_command(opts)}", file=sys.stderr)
    return 130


def search_and_conclude(args, space: Space, opts: SearchOptions, data: TrialData, data_dir: Path,
                        timings: Timings) -> int:
    from tuner.cluster import check_multi_node, connect_ray, ray_is_up, stop_ray_beside, trial_resources
    from tuner.data_inputs import held_out_input, split_inputs
    from tuner.outcome import conclude
    from tuner.store import check_tracking
    from tuner.tracking import log_datasets

    with timings.phase("setup"):
        check_exists(opts, args.resume)
        uri = tracking_uri_for(args, opts)
        client = check_tracking(uri)                        # before Ray starts
        pinned = saved_settings(opts).get("pretrained_from") if args.resume else None
        weights = resolve_pretrained(space, opts.overrides, uri, args.download, pinned)   # transfer: before Ray too
        opts.pretrained, opts.overrides = weights.state, {**opts.overrides, **weights.settings}
        opts.pretrained_from = weights.pinned if weights.pinned != "none" else weights.source
    with timings.phase("Ray start"):
        ray_was_up = ray_is_up()
        cluster = connect_ray(args.address)
    with GracefulStop() as stop:                            # after ray.init, which sets its own SIGTERM
        with timings.phase("setup"):
            opts.cpus_per_trial, opts.gpus_per_trial = trial_resources(args, space, cluster)
            opts.full_output = args.verbose
            check_multi_node(opts.storage_path, uri)
            eff = effective_space(space, opts)
            tracking = start_tracking(args, uri, client, eff, opts, split_inputs(data, data_dir),
                                      search_floor(eff, data))
            opts.callbacks = [tracking.trial_runs]
        with timings.phase("search"), stop.searching():
            results = make_tuner(args, space, data, opts).fit()
        if stop.requested:
            return stopped(tracking, opts, started_here=not ray_was_up)
    ray_stopping = stop_ray_beside(started_here=not ray_was_up)   # the rest needs no Ray
    tracking.trial_runs = tracking.trial_runs.records()
    with timings.phase("conclusion"):
        test_set = load_part(space.dataset, data_dir, "test", args.download)
        log_datasets(tracking.trial_runs.mlflow, tracking.parent_run_id,
                     [held_out_input(space.dataset, test_set, data_dir)], "test data")
        code = conclude(results, eff, data, test_set, opts, tracking, args.log_top_k)
        ray_stopping.join()
    print(f"{'wall time':>14}: {timings.line()}")
    if code == 0 and args.analyze:
        from tuner.analyze import analyze_search

        analyze_search(opts.name, uri, data_dir, experiment_name(args, opts, space), args.download)
    return code
