"""Acknowledged events survive the loss of the node that holds them.

A real two-node cluster (``ray.cluster_utils.Cluster``), the event log's WAL and output on
storage both nodes mount at the same path (here the same disk: what a ReadWriteMany volume
gives the pods of cluster/kuberay-rayservice.yaml). The log actor runs on the second node with a
flush interval of an hour, acknowledges N events, and that node is removed: Ray restarts the
actor on the head, it recovers the WAL, and all N rows reach Parquet, each once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from recsys_dist import schema

pytestmark = pytest.mark.slow

APPENDS, PER_APPEND = 4, 25

# Creates the log actor on the second node, appends, and prints the log's stats: acknowledged,
# not yet published. Soft affinity (when the node is gone, Ray may restart the actor anywhere)
# can still place it on the head while the cluster's view of a node that just joined settles:
# such a log is removed unused and made again, until one runs on the second node.
DRIVER = """
import json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from recsys_dist.serving.event_log import event_log_actor
from recsys_dist.serving.store import Event

node, log_dir, wal_dir, appends, per_append = json.loads(sys.argv[1])
ray.init()
there = NodeAffinitySchedulingStrategy(node, soft=True)
for attempt in range(60):
    log = event_log_actor(
        log_dir, wal_dir, 10**6, 3600.0, name=f"log{attempt}", scheduling_strategy=there
    )
    if ray.get(log.stats.remote())["node_id"] == node:
        break
    ray.kill(log)  # never appended to: it leaves no segment
    time.sleep(0.5)  # the cluster's view settling; bounded by the attempts
for call in range(appends):
    first = 1_000 + call * per_append
    events = [Event(f"u{call}", f"i{k}", first + k) for k in range(per_append)]
    ray.get(log.append.remote(events))  # returned: the service may acknowledge them
print(json.dumps(ray.get(log.stats.remote())))
"""


def test_acknowledged_events_reach_parquet_after_their_node_is_lost(tmp_path):
    from ray.cluster_utils import Cluster

    log_dir, wal_dir = tmp_path / "event_log", tmp_path / "wal"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        argv = [second.node_id, str(log_dir), str(wal_dir), APPENDS, PER_APPEND]
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(argv)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_ADDRESS": cluster.address},
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        assert stats["node_id"] == second.node_id  # the WAL's writer is on the doomed node
        assert stats["pending"] == APPENDS * PER_APPEND and stats["files_written"] == 0
        assert not list(log_dir.rglob("*.parquet"))  # acknowledged, only in the WAL

        cluster.remove_node(second)
        rows = _rows_published(log_dir, expected=APPENDS * PER_APPEND, timeout_s=120)
    finally:
        cluster.shutdown()
    assert len(rows) == APPENDS * PER_APPEND
    assert len({(r["user_id"], r["item_id"], r["timestamp"]) for r in rows}) == len(rows)
    assert not list(wal_dir.rglob("*.wal"))  # published, then removed from the WAL


def _rows_published(log_dir, expected: int, timeout_s: float) -> list[dict]:
    """The event rows in ``log_dir``'s Parquet files, once there are ``expected`` of them."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        files = sorted((log_dir / schema.EVENTS_DIR).glob("*.parquet"))
        rows = [row for path in files for row in pq.read_table(path).to_pylist()]
        if len(rows) >= expected:
            return rows
        time.sleep(0.2)  # a poll interval, bounded by the deadline
    pytest.fail(f"{len(rows)} of {expected} acknowledged events reached Parquet")
