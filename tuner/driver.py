"""What ``python -m tuner.run`` does, in order: check every input, then search, then report.

Everything that can be wrong with the input (space, data, tracking store, Ray address, resources) is
checked before the first trial starts.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tuner.data import TrialData, load_part, prepare_trial_data, resolve_data_dir
from tuner.errors import UserError
from tuner.search import SMOKE, SearchOptions, build_tuner, effective_space
from tuner.spaces import Space, load_space, parse_override

log = logging.getLogger("tuner")


@dataclass
class Tracking:
    uri: str
    client: object
    experiment_id: str
    parent_run_id: str


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


def search_tags(args, space: Space, name: str, storage: Path) -> tuple[dict, dict]:
    tags = {"tuner.space": space.name, "tuner.command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "mlflow.note.content": space.description}
    params = {"space": space.name, "dataset": space.dataset, "model": space.model, "metric": space.metric,
              "mode": space.mode, "max_epochs": space.max_epochs, "grace_period": space.grace_period,
              "reduction_factor": space.reduction_factor, "num_samples": space.num_samples,
              "searcher": "grid" if args.grid else "optuna-tpe", "scheduler": "asha", "seed": args.seed,
              "val_fraction": space.val_fraction, "storage_path": str(storage)}
    return tags, params


def open_tracking(args, space: Space, name: str, storage: Path) -> Tracking:
    from tuner.tracking import check_tracking, resolve_tracking_uri, start_search_run

    uri = resolve_tracking_uri(args.tracking_uri)
    client = check_tracking(uri)
    tags, params = search_tags(args, space, name, storage)
    experiment_id, run_id = start_search_run(client, uri, args.experiment or space.name, name, str(storage),
                                             tags, params)
    client.log_artifact(run_id, str(space.path))
    return Tracking(uri, client, experiment_id, run_id)


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

    from tuner.search import make_trainable

    if not args.resume:
        return build_tuner(space, data, opts)
    eff = effective_space(space, opts)
    return tune.Tuner.restore(str(opts.experiment_path), trainable=make_trainable(data, opts),
                              param_space=eff.grid_space() if opts.grid else eff.param_space(),
                              resume_unfinished=True, resume_errored=True)


def run_search(args: argparse.Namespace) -> int:
    from tuner.run import default_name
    from tuner.tracking import TrialRuns

    space = load_space(args.space)
    overrides = dict(parse_override(o, space) for o in args.overrides)
    if args.resume and not args.name:
        raise UserError("--resume needs --name: the name of the search to continue")
    name = args.name or default_name(space.name)
    num_samples, max_epochs, limit = budget(args, space)
    data_dir = resolve_data_dir(args.data_dir)
    data = prepare_trial_data(space.dataset, data_dir, space.val_fraction, args.seed, args.download, limit)
    opts = SearchOptions(name, Path(args.storage_path).expanduser().resolve(), num_samples, max_epochs, 1, 0,
                         args.max_concurrent, args.seed, args.max_failures, args.grid, overrides)
    check_name(opts, args.resume)
    eff = effective_space(space, opts)
    tracking = open_tracking(args, eff, name, opts.storage_path)
    opts.cpus_per_trial, opts.gpus_per_trial = trial_resources(args, space, connect_ray(args.address))
    opts.callbacks = [TrialRuns(tracking.uri, tracking.experiment_id, tracking.parent_run_id,
                                (eff.grace_period, eff.reduction_factor, eff.max_epochs))]
    results = make_tuner(args, space, data, opts).fit()
    return finish(results, eff, data, load_part(space.dataset, data_dir, "test", args.download), opts, tracking)


def finish(results, space: Space, data: TrialData, test_set, opts: SearchOptions, tracking: Tracking) -> int:
    """Leaderboard, the best trial's best checkpoint on the test set, MLflow, and the printout."""
    from tuner.evaluation import load_trial_model, score
    from tuner.summary import leaderboard, print_summary, trial_id_of
    from tuner.tracking import finish_search_run

    board = leaderboard(results, space)
    scored = board[board[f"best_{space.metric}"].notna() & (board["epochs"] > 0)] if len(board) else board
    by_id = {trial_id_of(r): r for r in results}
    board_csv = opts.experiment_path / "leaderboard.csv"
    board.to_csv(board_csv, index=False)
    test, best_config = None, {}
    if len(scored):
        best = by_id[scored.iloc[0]["trial_id"]]      # the leaderboard's first, so the two always agree
        best_config = {k: v for k, v in best.config.items() if k in space.search}
        checkpoint = best.get_best_checkpoint(space.metric, space.mode) or best.checkpoint
        with checkpoint.as_directory() as folder:
            model = load_trial_model(best.config, folder, data)
        test = {**score(model, test_set), "test_images": len(test_set)}
    missed = finish_search_run(tracking.uri, tracking.parent_run_id, board, board_csv, space, test,
                               scored.iloc[0]["trial_id"] if len(scored) else None, opts.callbacks[0])
    print_summary(board, space, best_config, test, where(opts, tracking, missed, space.path))
    if not len(scored):
        print("error: no trial finished an epoch; see the errors above and in the results folder", file=sys.stderr)
        return 1
    return 0


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db = db.relative_to(Path.cwd())
        except ValueError:
            pass
        return f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def where(opts: SearchOptions, tracking: Tracking, missed: list[str], space_path: Path) -> dict:
    from tuner.spaces import SPACES_DIR

    space_arg = space_path.stem if space_path.parent == SPACES_DIR else str(space_path)
    out = {"results": str(opts.experiment_path), "leaderboard": str(opts.experiment_path / "leaderboard.csv"),
           "MLflow store": tracking.uri, "MLflow run": f"experiment {tracking.experiment_id}, run "
                                                       f"{tracking.parent_run_id}",
           "open the UI": ui_command(tracking.uri),
           "resume with": f"python -m tuner.run --space {space_arg} --name {opts.name} --resume"}
    if missed:
        out["not in MLflow"] = f"{len(missed)} writes failed (first: {missed[0]})"
    return out
