"""python -m tuner.run --space NAME: search a space with Ray Tune (ASHA + Optuna), track it in MLflow.

Bad input (an unknown space, a malformed file, a value out of range, a name that is not allowed, a missing
data dir, an unreachable tracking server or Ray address) is one line on stderr and exit status 2, before
anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys

# Before Ray or MLflow are imported: no usage reporting; Ray's classic output engine (the one that takes a
# progress reporter: tuner.console's line, or with --verbose the status table); MLflow calls that fail fast
# instead of retrying for minutes mid-search.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from tuner.cli import Help, exit_code, skip_final_collection  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.run", description=__doc__.splitlines()[0],
                                formatter_class=Help)
    p.add_argument("--space", help="a shipped space name (see --list) or a path to a .yaml file (default: quickstart; "
                                   "on --resume, the search's own)")
    p.add_argument("--list", action="store_true", help="list the shipped spaces and exit")
    p.add_argument("--name", help="search name, for --resume and in MLflow: letters, digits, '_', '.', '-' "
                                  "(default: SPACE-YYYYmmdd-HHMMSS-xxxx, xxxx random)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search called --name")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's num_samples)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial at most, ASHA's max_t (default: the space's)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the space's resources.cpu)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions share a GPU: 0.25 runs four trials on one (default: the "
                        "space's resources.gpu where the cluster has GPUs, else 0)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once at most (default: what resources allow; "
                                                     "on --resume, the search's own)")
    p.add_argument("--max-failures", type=int, help="retries of a crashed trial from its last checkpoint (default: 1; "
                                                    "on --resume, the search's own)")
    p.add_argument("--data-dir", help="dataset folder (default: $TUNER_DATA_DIR, else ./data)")
    p.add_argument("--download", action="store_true", help="download a missing dataset with torchvision")
    p.add_argument("--storage-path", default="ray_results", help="where Ray keeps results and checkpoints")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the sqlite "
                                          "store mlflow/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the space's name)")
    p.add_argument("--log-top-k", type=int, default=1, metavar="K",
                   help="log and register the K best trials' models in MLflow (the best is aliased champion)")
    p.add_argument("--address", help="Ray cluster to run on: auto, host:port or ray://host:port (default: a "
                                     "local Ray started for this search)")
    p.add_argument("--submit", metavar="ADDRESS",
                   help="submit the search to a Ray cluster's job server (http://HOST:8265) as a Ray Job that runs "
                        "there without this machine: --storage-path, --data-dir and a tracking server are the "
                        "cluster's; follow it with python -m tuner.jobs")
    p.add_argument("--seed", type=int, help="seeds the validation split, the searcher and every trial (default: 0; "
                                             "on --resume, the search's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a setting on top of the space, e.g. --set lr=0.001 (repeatable)")
    p.add_argument("--grid", action="store_true", help="run the space's choices as an exhaustive grid instead of TPE")
    p.add_argument("--analyze", action="store_true", help="after the search, write the best model's report "
                                                          "(python -m tuner.analyze) to analysis/NAME and MLflow")
    p.add_argument("--smoke", action="store_true", help="a tiny budget that checks a space end to end "
                                                        "(2 trials, 1 epoch, 1,024 training images)")
    p.add_argument("--verbose", action="store_true", help="Ray's status table of every trial instead of the "
                                                          "progress line, and every library's notices")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def leave_ray_working_dir(args: argparse.Namespace) -> None:
    """A search submitted as a Ray Job (``--submit``) starts in the job's working directory, which Ray
    deletes and unpacks anew whenever a worker on this node needs it again (its working_dir plugin
    overwrites): the driver's own current directory would vanish under it, and with it every relative path.
    The driver moves to a folder of its own and takes the space file along; the packages stay importable
    (``sys.path`` holds the directory's absolute path, which Ray unpacks again)."""
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="tuner-job-driver-"))
    if Path(args.space).is_file():
        args.space = str(shutil.copy(args.space, folder / Path(args.space).name))
    os.chdir(folder)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TUNER_JOB_DRIVER") == "1":     # set by --submit in the job's environment
        leave_ray_working_dir(args)
    args.argv = sys.argv[1:] if argv is None else list(argv)   # as typed: recorded beside a submitted search
    skip_final_collection()
    return exit_code(lambda: list_or_search(args), "interrupted: continue with --resume --name <the search's name>")


def list_or_search(args: argparse.Namespace) -> int:
    if args.list:
        from tuner.spaces import list_spaces

        for name, desc in list_spaces():
            print(f"{name:24} {desc}")
        return 0
    from tuner.safe_yaml import read_space_file
    from tuner.space_files import find_space

    if args.space is None and (args.submit or not (args.resume and args.name)):
        args.space = "quickstart"     # on --resume the search's own space is taken (tuner.driver)
    # A mistyped name or a file that is not YAML: one line at once, not after the seconds Ray and torch take
    # to load. The rest of the file (keys, values, the architecture) is checked with the search's libraries.
    if args.space is not None:
        read_space_file(find_space(args.space))
    if args.submit:
        from tuner.submit import submit_search

        return submit_search(args)
    from tuner.driver import run_search

    return run_search(args)


if __name__ == "__main__":
    sys.exit(main())
