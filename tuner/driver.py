"""What ``python -m tuner.run`` does, in order: check every input, then search, then conclude.

Everything that can be wrong with the input (space, data, tracking store, Ray address, resources) is
checked before the first trial starts; the tracking store before Ray is even started.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import socket
import sys
from pathlib import Path

from tuner.data import TrialData, load_part, prepare_trial_data, resolve_data_dir
from tuner.errors import UserError
from tuner.pretrained import resolve_pretrained
from tuner.search import SMOKE, SearchOptions, build_tuner, effective_space, make_trainable, search_settings
from tuner.spaces import Space, load_space, parse_override
from tuner.tracking import Tracking

log = logging.getLogger("tuner")


def connect_ray(address: str | None) -> dict:
    """Start a local Ray, or join the cluster at ``address``; returns the cluster's resources."""
    import ray

    if address and not address.startswith("auto"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"Ray cluster at {address} is unreachable ({exc}); start one with `ray start --head` "
                            f"or check --address") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    return ray.cluster_resources()


def trial_resources(args: argparse.Namespace, space: Space, cluster: dict) -> tuple[float, float]:
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else space.resources["cpu"]
    have_cpus, have_gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if cpus > have_cpus:
        raise UserError(f"{cpus:g} CPUs per trial but the Ray cluster has {have_cpus:g}; lower --cpus-per-trial")
    if args.gpus_per_trial is not None:
        gpus = args.gpus_per_trial
        if gpus > have_gpus:
            raise UserError(f"{gpus:g} GPUs per trial but the Ray cluster has {have_gpus:g}; lower --gpus-per-trial")
    else:
        gpus = space.resources["gpu"] if have_gpus >= space.resources["gpu"] else 0.0
        if space.resources["gpu"] and not gpus:
            print(f"note: {space.name} asks for {space.resources['gpu']:g} GPU per trial; this cluster has "
                  f"{have_gpus:g}, so trials run on the CPU", file=sys.stderr)
    return cpus, gpus


def check_name(opts: SearchOptions, resume: bool) -> None:
    from ray import tune

    exists = tune.Tuner.can_restore(str(opts.experiment_path))
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
    return tune.Tuner.restore(str(opts.experiment_path), trainable=make_trainable(data, opts),
                              param_space=eff.grid_space() if opts.grid else eff.param_space(),
                              resume_unfinished=True, resume_errored=True)


def start_tracking(args, uri: str, client, space: Space, opts: SearchOptions) -> Tracking:
    """The search's MLflow run (created, or adopted on --resume) and the callback for its trials' runs."""
    from tuner.tracking import TrialRuns, start_search_run

    command = shlex.join(["python -m tuner.run", *sys.argv[1:]]) if sys.argv[0].endswith("run.py") else \
        shlex.join(sys.argv)
    tags = {"tuner.space": space.name, "tuner.command": command, "mlflow.note.content": space.description}
    settings = search_settings(space, opts)
    experiment_id, run_id = start_search_run(client, uri, args.experiment or space.name, opts.name,
                                             str(opts.storage_path), tags, settings)
    client.log_artifact(run_id, str(space.path))
    client.log_dict(run_id, settings, "search_settings.json")
    callback = TrialRuns(uri, experiment_id, run_id, (space.grace_period, space.reduction_factor, space.max_epochs))
    return Tracking(uri, experiment_id, run_id, callback)


def run_search(args: argparse.Namespace) -> int:
    from tuner.outcome import conclude
    from tuner.run import default_name
    from tuner.tracking import check_tracking, resolve_tracking_uri

    space = load_space(args.space)
    overrides = dict(parse_override(o, space) for o in args.overrides)
    if args.resume and not args.name:
        raise UserError("--resume needs --name: the name of the search to continue")
    num_samples, max_epochs, limit = budget(args, space)
    data_dir = resolve_data_dir(args.data_dir)
    data = prepare_trial_data(space.dataset, data_dir, space.val_fraction, args.seed, args.download, limit)
    opts = SearchOptions(args.name or default_name(space.name), Path(args.storage_path).expanduser().resolve(),
                         num_samples, max_epochs, 1, 0, args.max_concurrent, args.seed, args.max_failures,
                         args.grid, overrides)
    check_name(opts, args.resume)
    uri = resolve_tracking_uri(args.tracking_uri)
    client = check_tracking(uri)                        # before Ray starts
    weights = resolve_pretrained(space, opts.overrides, uri, args.download)   # transfer: before Ray starts too
    opts.pretrained, opts.overrides = weights.state, {**opts.overrides, **weights.settings}
    opts.cpus_per_trial, opts.gpus_per_trial = trial_resources(args, space, connect_ray(args.address))
    eff = effective_space(space, opts)
    tracking = start_tracking(args, uri, client, eff, opts)
    opts.callbacks = [tracking.trial_runs]
    results = make_tuner(args, space, data, opts).fit()
    test_set = load_part(space.dataset, data_dir, "test", args.download)
    return conclude(results, eff, data, test_set, opts, tracking, args.log_top_k)
