"""The production loop on a real multi-node Ray cluster with token auth, wired as shipped.

A head without CPUs and worker nodes of the group ``serve``, each a ``ray start`` process of
its own (bench/cluster_loop.py ``LocalCluster``); moto's S3 server as object storage and a
real ``redis-server``. The Serve config is the one ``cluster/kuberay-rayservice.yaml`` embeds,
PUT to the dashboard's REST API with the token the way the KubeRay operator does it. Under a
paced load of recommend and event requests: events reach S3 before they are acknowledged;
the node holding the event log is killed; ``ray job submit`` runs a retraining turn whose
training node is killed too; the candidate is promoted and every replica answers from it,
with no failed request across the switch; every acknowledged event is in S3 and the turn
took each file once; a second cluster over the same WAL directory stands by without
touching the first's log, and its health says so.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from recsys_dist import storage
from recsys_dist.data.events import event_files
from recsys_dist.registry import Registry
from recsys_dist.serving.auth import KeysFile
from tests.bench.scripts import load_bench
from tests.cluster_manifests import rayservice_serve_config

pytestmark = pytest.mark.slow


def served_event_log(url: str, key: str) -> dict:
    answer = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["event_log"]


def test_the_loop_runs_on_a_multi_node_cluster_with_token_auth(
    trained_run, s3_prefix, redis_server, cli_json
):
    bench = load_bench("cluster_loop")
    started, phases = time.monotonic(), {}  # seconds into the test each phase ended (with -s)

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started, 1)

    root = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp"))  # short: Ray's socket paths
    registry, event_log = f"{s3_prefix}/registry", f"{s3_prefix}/event_log"
    v1 = cli_json("models", "register", "--registry", registry, "--run", str(trained_run.run))
    v1 = v1["version"]
    cli_json("models", "promote", "--registry", registry, v1)
    keys = KeysFile(str(root / "keys.json"))
    key = keys.create("loop", ["recommend", "events:write"])
    values = {
        "s3://BUCKET": s3_prefix,
        "/mnt/wal": str(root / "wal"),
        "/etc/recsys-dist/keys/keys.json": keys.path,
    }
    users, batches = bench.event_batches(trained_run.raw)
    cluster = bench.LocalCluster(root / "a", env={"REDIS_URL": redis_server.url})
    standby = bench.LocalCluster(root / "b", env={"REDIS_URL": redis_server.url})
    load = None
    try:
        cluster.start_head(cpus=0)
        for name in ("w1", "w2"):
            cluster.add_node(name, cpus=2)
        config = bench.one_host(rayservice_serve_config(), values, bench.free_port())
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        put = ("PUT", "/api/serve/applications/")
        assert cluster.api(*put, token=None, json=config).status_code == 401
        assert cluster.api(*put, token="not-the-token", json=config).status_code == 403
        cluster.deploy(config)
        phase("deployed")

        load = bench.Load(url, key, users, batches, rate=10.0)
        load.thread.start()
        cluster.wait_until(lambda: len(load.acknowledged) >= 10, "events acknowledged")
        acked = bench.rows_of(batch for *_, batch in load.acknowledged)
        assert acked <= bench.logged(event_log), "an acknowledged event is not in object storage"

        holder = cluster.name_of(served_event_log(url, key)["node_id"])
        cluster.kill(holder)  # the node holding the event log dies mid-load
        cluster.add_node("w3", cpus=2)  # as KubeRay would replace the pod
        phase("event log node killed")
        cluster.wait_until(lambda: not load.batches, "every batch acknowledged", 600)
        moved = served_event_log(url, key)
        phase("every batch acknowledged")
        assert moved["state"] == "active" and cluster.name_of(moved["node_id"]) != holder

        files = event_files(event_log)
        output = f"{s3_prefix}/retraining"
        submission = cluster.submit(
            *bench.retrain_command(registry, event_log, output, *bench.TURN)
        )
        cluster.wait_until(lambda: cluster.actor_nodes("RayTrainWorker"), "training", 600)
        (trainer_node,) = cluster.actor_nodes("RayTrainWorker")
        cluster.kill(trainer_node)  # the retraining's node dies mid-run
        cluster.add_node("w4", cpus=2)
        phase("training node killed")
        job = cluster.wait_for_job(submission)
        phase("turn done")
        logs = cluster.job_logs(submission)
        assert job["status"] == "SUCCEEDED", logs[-3000:]
        turn = json.loads(logs.strip().splitlines()[-1])
        assert turn["promoted"] and turn["parent"] == v1, turn
        assert turn["new_files"] == len(files), turn
        assert turn["new_items"] == len(bench.NEW_ITEMS), turn
        v2 = turn["candidate"]

        cluster.wait_until(lambda: bench.serving(load, v2), "every replica on v2")
        switched = bench.switch(load, Registry(registry).pointer().updated_at, v2)
        phase("switched")
        assert switched["requests_during_switch"] and not switched["non_2xx_during_switch"]
        ranked = httpx.post(
            f"{url}/v1/recommend",
            json={"user_id": users[100], "k": 250},
            headers=load.headers,
            timeout=30,
        ).json()
        recommended = {item["item_id"] for item in ranked["items"]}
        assert ranked["model_version"] == v2 and set(bench.NEW_ITEMS) <= recommended

        load.stop.set()
        load.thread.join()
        acked = bench.rows_of(batch for *_, batch in load.acknowledged)
        assert acked == bench.rows_of(batches), "an event batch was never acknowledged"
        assert acked <= bench.logged(event_log), "an acknowledged event was lost"
        taken = storage.read_json(f"{s3_prefix}/retraining/prepared/manifest.json")["input_files"]
        from_log = [f for f in taken if f.startswith(event_log)]
        assert sorted(from_log) == sorted(files) and len(set(taken)) == len(taken)

        standby.start_head(cpus=0)
        standby.add_node("s1", cpus=1)
        second = bench.one_host(rayservice_serve_config(), values, bench.free_port(), replicas=1)
        standby.deploy(second)
        phase("second cluster deployed")
        health = httpx.get(f"http://127.0.0.1:{second['http_options']['port']}/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["event_log"].startswith("standby")
        late = {"user_id": users[0], "item_id": "late-item", "timestamp": 2_000_000_000}
        answer = httpx.post(f"{url}/v1/events", json={"events": [late]}, headers=load.headers)
        assert answer.status_code == 200  # the first cluster's log goes on, untouched
        assert bench.rows_of([[late]]) <= bench.logged(event_log)
    finally:
        print("phases (s):", phases)
        if load is not None:
            load.stop.set()
        standby.stop()
        cluster.stop()
