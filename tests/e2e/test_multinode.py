"""A real two-node Ray cluster on loopback: one training worker per node, everything on S3.

``ray.cluster_utils.Cluster`` starts a head and a second node, each its own raylet with its
own object store, as Ray's own multi-node tests do. The CLI runs in a separate driver
process that connects with ``--address``; data, checkpoints and the export live on the moto
S3 endpoint, the only storage both nodes share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recsys_dist import storage
from recsys_dist.train.loop import METRICS_FILE

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys
from recsys_dist import cli
for argv in json.loads(sys.argv[1]):
    code = cli.main(argv)
    if code:
        sys.exit(code)
"""


def test_two_nodes_train_one_worker_each_from_s3(s3_prefix):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        raw, prepared, run = (storage.join(s3_prefix, name) for name in ("raw", "p", "run"))
        address = ["--address", cluster.address]
        commands = [
            ["generate", "--output", raw, "--users", "200", "--items", "60", *address],
            ["prepare", "--data", raw, "--output", prepared, "--max-len", "20", *address],
            [
                *("train", "--data", prepared, "--output", run, "--workers", "2", *address),
                *("train.placement_strategy=STRICT_SPREAD", "train.epochs=2"),
                *("model.hidden_size=16", "model.intermediate_size=32", "model.num_layers=1"),
            ],
            ["evaluate", "--run", run, "--split", "test", "--json", *address],
        ]
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(commands)],
            capture_output=True,
            text=True,
            env={**os.environ, "RAY_ADDRESS": ""},
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        cluster.shutdown()
    epochs = [json.loads(line) for line in storage.read_text(f"{run}/{METRICS_FILE}").splitlines()]
    assert [e["train_nodes"] for e in epochs] == [2, 2]  # one worker on each node
    assert storage.exists(storage.join(run, "model", "model.safetensors"))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ndcg@10"] > 0
