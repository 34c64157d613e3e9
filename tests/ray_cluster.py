"""A real Ray cluster on this machine for tests: each node is a `ray start --block` in its own process
session, stopped by that (never `ray stop`: other Ray instances may run here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.mlflow_server import free_port
from tests.processes import kill_processes_mentioning

# Ray 2.60 secures a cluster with a token; every node and the driver must hold it. The test's own token,
# so it neither needs nor touches ~/.ray/auth_token.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        "RAY_USAGE_STATS_ENABLED": "0"}


def wait_port(port: int, node: "RayNode", timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {Path(node.out.name).read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray head on port {port}")


class RayNode:
    def __init__(self, *args: str, log: Path):
        bin_dir = Path(sys.executable).parent
        ray = str(bin_dir / "ray")
        self.out = open(log, "w")
        self.proc = subprocess.Popen([ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                                     stdout=self.out, stderr=subprocess.STDOUT, env={**os.environ, **AUTH,
                                                                        # jobs run `python` from the PATH
                                                                        "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                                     start_new_session=True)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # the node's raylet, workers and agents: its session
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.out.close()


@contextmanager
def two_nodes(folder: Path, *head_args: str):
    """A head (with ``head_args``) and a second node, one CPU each: yields (GCS port, head, worker)."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")     # short: Ray's socket paths live under it
    port = free_port()
    head = RayNode("--head", "--port", str(port), "--temp-dir", temp, "--ray-client-server-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()), *head_args, log=folder / "head.log")
    worker = None
    try:
        wait_port(port, head)
        worker = RayNode("--address", f"127.0.0.1:{port}", "--dashboard-agent-listen-port", str(free_port()),
                         log=folder / "worker.log")
        time.sleep(5)    # the second raylet registers with the head
        yield port, head, worker
    finally:
        if worker is not None:
            worker.stop()
        head.stop()
        kill_processes_mentioning(temp)
