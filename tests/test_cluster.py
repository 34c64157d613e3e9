"""A real two-node Ray cluster on this machine: a search with --address uses both nodes, and survives
losing the second one. Each node is a `ray start --block` in its own process session, stopped by that."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.mlflow_server import MlflowServer
from tests.processes import Search, child_runs, wait_until
from tests.ray_cluster import AUTH, two_nodes

pytestmark = pytest.mark.slow
SPACE = """description: MNIST trials long enough (seconds) for a cluster to spread them
dataset: mnist
model: report003_mnist
val_fraction: 0.8
fixed: {batch_size: 128}
search:
  kernel_size: {choice: [3, 5]}
  lr: {loguniform: [5.0e-4, 3.0e-3]}
scheduler: {max_epochs: 3, grace_period: 3}
num_samples: 4
resources: {cpu: 1}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with two_nodes(tmp_path_factory.mktemp("cluster"), "--include-dashboard=false") as (port, _, worker):
        yield f"127.0.0.1:{port}", worker


def node_ids(folder: Path) -> set[str]:
    ids = set()
    for result in folder.glob("trial_*/result.json"):
        ids |= {json.loads(line).get("node_id") for line in result.read_text().splitlines() if line.strip()}
    return ids - {None}


def test_a_local_store_on_a_multi_node_cluster_is_one_line(cluster, tmp_path):
    address, _ = cluster
    search = Search("--space", "quickstart", "--address", address, "--storage-path", str(tmp_path / "rr"),
                    "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", env=AUTH)
    code, out = search.wait(timeout=120)
    assert code == 2, out
    assert "error: this Ray cluster has 2 nodes but the tracking store sqlite:" in out
    assert not list((tmp_path / "rr").iterdir())    # the storage root only: no search folder, no lock left


def test_a_search_spreads_over_two_nodes_and_survives_losing_one(cluster, tmp_path, data_dir):
    address, worker = cluster
    space = tmp_path / "mnist_cluster.yaml"
    space.write_text(SPACE)
    server = MlflowServer(tmp_path).wait()
    try:
        search = Search("--space", str(space), "--name", "c", "--address", address, "--data-dir", str(data_dir),
                        "--storage-path", str(tmp_path / "rr"), "--tracking-uri", server.uri, "--max-failures", "3",
                        env=AUTH)

        def both_nodes_busy():
            nodes = {r.data.tags.get("tuner.node_id") for r in child_runs(server.uri, "mnist_cluster")}
            return len(nodes - {None}) >= 2

        try:
            assert wait_until(both_nodes_busy, timeout=240), search.log.read_text()[-3000:]
            worker.stop()                                   # lose the second node mid-search
            code, out = search.wait(timeout=600)
        finally:
            search.kill()
        assert code == 0, out[-3000:]
        board = pd.read_csv(tmp_path / "rr" / "c" / "leaderboard.csv")
        assert len(board) == 4 and board["trial_id"].is_unique
        # The trial on the lost node is retried on the head from its checkpoint. Seen once: Ray 2.60 retried
        # a trial that had just been given the lost node's reused actor on that dead actor, and it ended
        # failed (an actor error); the search went on and finished every other trial.
        failed = board[board["end_reason"].str.startswith("failed")]
        assert len(failed) <= 1 and failed["end_reason"].str.contains("actor", case=False).all(), failed
        assert (board["end_reason"] == "completed").sum() == len(board) - len(failed)
        assert len(node_ids(tmp_path / "rr" / "c")) == 2
    finally:
        server.stop()
