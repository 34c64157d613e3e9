"""The Ray side of a search: start or join a cluster, size the trials, and check that a multi-node
cluster has what it needs (storage and tracking every node reaches) before anything starts."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import uuid
from pathlib import Path

from tuner.errors import UserError
from tuner.guards import redact
from tuner.spaces import Space

NODE_CHECK_SECONDS = 60   # how long each node may take to answer the shared-storage probe


def ray_token_file() -> Path | None:
    """The token file Ray reads (``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``), unless token
    authentication is off or ``$RAY_AUTH_TOKEN`` holds the token itself."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def secure_ray_token(starting: bool) -> None:
    """A local Ray writes a missing token file readable by everyone: write it first, readable by this user
    only. A token file others can read (anyone who has it can run code on the cluster) is one warning."""
    import secrets

    path = ray_token_file()
    if path is None:
        return
    if starting and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))   # Ray's own format: 256 random bits in hex
        return
    if path.is_file() and path.stat().st_mode & 0o077:
        mode = f"{path.stat().st_mode & 0o777:o}"
        print(f"warning: Ray's token file {path} is readable by other users (mode {mode}), who can run code on "
              f"this Ray cluster with it: chmod 600 {path}", file=sys.stderr)


def connect_ray(address: str | None) -> dict:
    """Start a local Ray, or join the cluster at ``address``; returns the cluster's resources."""
    import ray

    secure_ray_token(starting=not address and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized())

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


def ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def stop_ray_beside(started_here: bool) -> threading.Thread:
    """Ray's shutdown, in a thread beside what follows the search (which needs no Ray): it takes a second or
    more, waiting for Ray's processes to end. Only for a Ray this search started or joined: one the caller
    already had (a notebook, the tests) stays up. Join the thread before the command ends."""
    import ray

    thread = threading.Thread(target=ray.shutdown if started_here else (lambda: None), name="ray-shutdown")
    thread.start()
    return thread


def trial_resources(args: argparse.Namespace, space: Space, cluster: dict) -> tuple[float, float]:
    """(CPUs, GPUs) per trial from the flags or the space, checked against what the cluster has."""
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


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _sees(path: str) -> bool:
    return os.path.exists(path)


def nodes_missing(path: Path, nodes: list[dict]) -> list[str]:
    """IPs of the nodes that cannot see ``path`` (a file the driver just wrote)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_sees)
    refs = {n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})": probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(path))
        for n in nodes}
    try:
        return [node for node, seen in zip(refs, ray.get(list(refs.values()), timeout=NODE_CHECK_SECONDS))
                if not seen]
    except ray.exceptions.GetTimeoutError:
        raise UserError(f"the cluster's nodes did not answer within {NODE_CHECK_SECONDS} s; check `ray status`") \
            from None


def check_multi_node(storage: str, tracking_uri: str) -> int:
    """On a cluster of several nodes, results and checkpoints must live where every node sees them, and the
    tracking store must be a server (an sqlite file belongs to one machine). Returns the node count."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return len(nodes)
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise UserError(f"this Ray cluster has {len(nodes)} nodes but the tracking store {redact(tracking_uri)} is a "
                        f"file on one machine; start `mlflow server` where all nodes reach it and pass "
                        f"--tracking-uri http://HOST:5000")
    if "://" in storage:
        return len(nodes)   # object storage (s3://, gs://, ...) is reachable from every node
    probe = Path(storage) / f".tuner-probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("every node of the cluster must see this file\n")
    try:
        missing = nodes_missing(probe, nodes)
    finally:
        probe.unlink(missing_ok=True)
    if missing:
        raise UserError(f"--storage-path {redact(storage)} is not shared: node {missing[0]} cannot see it; use a "
                        f"folder on a file system every node mounts (NFS, ...) or s3://bucket/path")
    return len(nodes)
