"""The production loop on a real multi-node Ray cluster on this host, timed.

The closest this machine gets to the cluster in ``cluster/``: separate ``ray start`` processes
(a head without CPUs, as KubeRay's RayService has it, and worker nodes in the node group
``serve``), each with its own temp dir and ports, token authentication on every one, moto's S3
server as object storage and a real ``redis-server``. The Serve config is ``serve/recommender.yaml``
(the RayService embeds the same; a static test keeps them equal), deployed as the KubeRay
operator does it: ``PUT /api/serve/applications/`` on the dashboard with the token in
``x-ray-authorization``. The few values that must differ on one host are set by
:func:`one_host`. Then:

1. a paced load of recommend and event requests runs throughout;
2. every acknowledged event reaches object storage (``serve.event_log_ack: published``): the
   time from sending it to its Parquet file being listed;
3. ``ray job submit`` (with the token) runs ``recsys-dist retrain`` over the event log; its
   wall time;
4. the promotion reaches every replica: the time from the registry's pointer moving to every
   answer naming the new version, and the requests served meanwhile (all must be 2xx).

    python bench/cluster_loop.py                 # prints JSON lines and a summary
    python bench/cluster_loop.py --workdir W --seconds 30

:class:`LocalCluster` is also what ``tests/e2e/test_cluster_loop.py`` drives (loaded by path).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsys_dist import schema, storage  # noqa: E402
from recsys_dist.data.events import event_files  # noqa: E402
from recsys_dist.registry import Registry  # noqa: E402
from recsys_dist.serving.auth import KeysFile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SERVE_CONFIG = REPO / "serve" / "recommender.yaml"
TOKEN_HEADER = "x-ray-authorization"  # what the KubeRay operator sends (the API proxy strips
# Authorization; docs: ../shared/design/kuberay-operator-notes.md)
NODE_GROUP = "serve"  # the worker group of the RayService; serve.state_node_group
# Everything that could hand a node a token, an address or a HOME other than the cluster's.
RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path
    labels: dict[str, str] = field(default_factory=dict)


class LocalCluster:
    """A Ray cluster of ``ray start`` processes on loopback, token auth on, each node in its
    own process group (so one can be killed as a machine would die) and its own ports.

    Args:
        root: A short directory (Ray's socket paths live under it).
        env: Extra environment for every node (the AWS endpoint, ``REDIS_URL``, ...).
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.token = secrets.token_hex(32)
        home = root / "home"  # not the user's: Ray would read ~/.ray/auth_token there
        home.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in RAY_ENV}
        self.env = {
            **base,
            **(env or {}),
            "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}:{base.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            # Serve's Python proxy on each node: HAProxy (the manifests' ingress) binds fixed
            # stats and metrics ports, which two nodes on one host cannot share.
            "RAY_SERVE_ENABLE_HA_PROXY": "0",
            # A killed node's raylet refuses connections at once: the GCS marks it dead after
            # 3 failed checks a second apart rather than 5 three seconds apart (Ray's
            # defaults, sized for networks that drop packets), so its actors restart sooner.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.gcs_port = free_port()
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.nodes: dict[str, Node] = {}
        self._workers = 20_000  # worker-port ranges, one block per node

    # --- nodes ------------------------------------------------------------------------

    def start_head(self, cpus: int = 0) -> None:
        """The head, with the dashboard and job API on loopback; returns once they answer."""
        port = self.dashboard.rsplit(":", 1)[1]
        self._start(
            "head",
            "--head",
            f"--port={self.gcs_port}",
            f"--dashboard-port={port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}",
            f"--num-cpus={cpus}",
        )
        self.wait_until(lambda: self.api("GET", "/api/version").status_code == 200, "the dashboard")

    def add_node(self, name: str, cpus: int, group: str = NODE_GROUP) -> Node:
        """A worker node in ``group``; returns once the cluster lists it alive."""
        labels = {"ray.io/node-group": group, "recsys-dist/node": name}
        node = self._start(
            name,
            f"--address=127.0.0.1:{self.gcs_port}",
            f"--num-cpus={cpus}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            labels=labels,
        )
        self.wait_until(lambda: self.node_id(name) is not None, f"node {name} to join")
        return node

    def _start(self, name: str, *args: str, labels: dict | None = None) -> Node:
        first, self._workers = self._workers, self._workers + 1000
        log = self.root / f"{name}.log"
        command = [
            *(RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-gpus=0"),
            *args,
            f"--temp-dir={self.root / 'ray'}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--min-worker-port={first}",
            f"--max-worker-port={first + 999}",
        ]
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the node's processes only
            )
        node = Node(name, process, log, labels or {})
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """SIGKILL every process of the node, as if its machine died."""
        node = self.nodes.pop(name)
        try:
            family = psutil.Process(node.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        node.process.wait()
        psutil.wait_procs(family, timeout=10)

    def stop(self) -> None:
        """Kill every node, workers first. Never ``ray stop``: it kills every Ray here."""
        for name in [n for n in self.nodes if n != "head"] + ["head"] * ("head" in self.nodes):
            self.kill(name)

    # --- the dashboard's REST API, as the operator calls it --------------------------

    def api(self, method: str, path: str, token: str | None = "", **kwargs) -> httpx.Response:
        """One call with the cluster's token (``token=None``: none; a string: that one)."""
        secret = self.token if token == "" else token
        headers = {TOKEN_HEADER: f"Bearer {secret}"} if secret is not None else {}
        return httpx.request(method, self.dashboard + path, headers=headers, timeout=30, **kwargs)

    def node_id(self, name: str) -> str | None:
        """The Ray node id of a live node of ours, by its label."""
        for node in self.api("GET", "/api/v0/nodes").json()["data"]["result"]["result"]:
            if node["state"] == "ALIVE" and node["labels"].get("recsys-dist/node") == name:
                return node["node_id"]
        return None

    def name_of(self, node_id: str) -> str:
        for name in self.nodes:
            if name != "head" and self.node_id(name) == node_id:
                return name
        raise LookupError(f"no live node of ours has id {node_id}")

    def actor_nodes(self, class_name: str) -> list[str]:
        """The nodes (our names) of the live actors of a class, e.g. ``RayTrainWorker``."""
        found = self.api("GET", "/api/v0/actors", params={"limit": 10_000}).json()
        ids = {
            actor["node_id"]
            for actor in found["data"]["result"]["result"]
            if actor["class_name"] == class_name and actor["state"] == "ALIVE"
        }
        return [self.name_of(node_id) for node_id in ids]

    def deploy(self, config: dict, timeout_s: float = 300) -> None:
        """PUT the Serve config and wait until every application is RUNNING."""
        answer = self.api("PUT", "/api/serve/applications/", json=config)
        assert answer.status_code == 200, answer.text
        names = [app["name"] for app in config["applications"]]

        def running() -> bool:
            path = "/api/serve/applications/?api_type=declarative"
            apps = self.api("GET", path).json().get("applications", {})
            statuses = {name: apps.get(name, {}).get("status") for name in names}
            failed = [n for n, s in statuses.items() if s == "DEPLOY_FAILED"]
            assert not failed, apps[failed[0]].get("message")
            return all(s == "RUNNING" for s in statuses.values())

        self.wait_until(running, "the Serve applications to run", timeout_s)

    def submit(self, *argv: str) -> str:
        """``ray job submit --no-wait`` with the cluster's token, as the retraining schedule
        runs it on plain Ray; returns the submission id."""
        done = subprocess.run(
            [RAY, "job", "submit", "--address", self.dashboard, "--no-wait", "--", *argv],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        printed = done.stdout + done.stderr
        assert done.returncode == 0, printed[-3000:]
        (found,) = {w.strip("'\".,") for w in printed.split() if w.startswith("'raysubmit_")}
        return found

    def job(self, submission: str) -> dict:
        return self.api("GET", f"/api/jobs/{submission}").json()

    def job_logs(self, submission: str) -> str:
        return self.api("GET", f"/api/jobs/{submission}/logs").json()["logs"]

    def wait_for_job(self, submission: str, timeout_s: float = 900) -> dict:
        self.wait_until(lambda: self.job(submission)["status"] in FINISHED, "the job", timeout_s)
        return self.job(submission)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.nodes.values():
                if node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited:\n{node.log.read_text()[-3000:]}")
            try:
                if condition():
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.5)  # a poll interval, bounded by the deadline


FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


def one_host(config: dict, values: dict[str, str], port: int, replicas: int = 2) -> dict:
    """The shipped Serve config with what differs on one host: the placeholders' values
    (``BUCKET``, and the pod paths of the WAL and the keys file), HTTP on loopback at
    ``port`` (nodes share the host's ports), and ``replicas`` fixed replicas of half a CPU
    each (a 2-core host) instead of autoscaling from one."""
    text = json.dumps(config)
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    local = json.loads(text)
    local["http_options"].update(host="127.0.0.1", port=port)
    (app,) = local["applications"]
    (deployment,) = app["deployments"]
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = replicas
    deployment["ray_actor_options"]["num_cpus"] = 0.5
    return local


class Load:
    """Recommend requests and event batches at a fixed pace from a thread, with an API key.

    ``batches`` are posted in order, one request each, a refused or failed one sent again
    (as a client does; nothing unacknowledged counts), interleaved with recommend requests
    for ``users``. Records every answer (when sent, status, model version) and every batch
    acknowledged.
    """

    def __init__(self, url: str, key: str, users: list[str], batches: list[list[dict]], rate):
        self.url, self.users, self.rate = url, users, rate
        self.batches = list(batches)
        self.headers = {"Authorization": f"Bearer {key}"}
        self.answers: list[tuple[float, int, str | None]] = []
        self.acknowledged: list[tuple[float, float, list[dict]]] = []  # sent, answered, events
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30, headers=self.headers) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.time()
                if n % 2 and self.batches:
                    status, version = self._post(client, self.batches[0], sent), None
                else:
                    status, version = self._recommend(client, self.users[n % len(self.users)])
                self.answers.append((sent, status, version))
                self.stop.wait(1 / self.rate)

    def _recommend(self, client: httpx.Client, user: str) -> tuple[int, str | None]:
        try:
            answer = client.post(f"{self.url}/v1/recommend", json={"user_id": user})
        except httpx.HTTPError:
            return 0, None
        version = answer.json().get("model_version") if answer.is_success else None
        return answer.status_code, version

    def _post(self, client: httpx.Client, events: list[dict], sent: float) -> int:
        try:
            answer = client.post(f"{self.url}/v1/events", json={"events": events})
        except httpx.HTTPError:
            return 0
        if answer.status_code == 200:
            self.acknowledged.append((sent, time.time(), self.batches.pop(0)))
        return answer.status_code

    def between(self, start: float, end: float) -> list[tuple[float, int, str | None]]:
        return [a for a in self.answers if start <= a[0] <= end]


def event_batches(raw: Path) -> tuple[list[str], list[list[dict]]]:
    """A generated log's users, and one batch of new events for each of 80 of them: half
    switch to the category they used least (a drift a model can learn), half take items no
    version has seen (:data:`NEW_ITEMS`), all after the log's end."""
    events = pq.read_table(raw / schema.EVENTS_DIR).sort_by(schema.TIMESTAMP).to_pylist()
    items = pq.read_table(raw / schema.ITEMS_DIR).to_pylist()
    category = {row[schema.ITEM_ID]: row[schema.CATEGORIES][0] for row in items}
    history: dict[str, list[str]] = {}
    for row in events:
        history.setdefault(row[schema.USER_ID], []).append(row[schema.ITEM_ID])
    end = max(row[schema.TIMESTAMP] for row in events)
    users, rng, batches = sorted(history), np.random.default_rng(0), []
    for user in users[:40]:
        used = {name: 0 for name in set(category.values())}
        for item in history[user]:
            used[category[item]] += 1
        pool = [i for i, c in category.items() if c == min(used, key=used.get)]
        picked = rng.choice(pool, size=10)
        batches.append([_event(user, str(i), end + 3600 + 60 * k) for k, i in enumerate(picked)])
    for n, user in enumerate(users[40:80]):
        batches.append([_event(user, NEW_ITEMS[(n + k) % 20], end + 7200 + k) for k in range(5)])
    return users, batches


NEW_ITEMS = [f"new-{i}" for i in range(20)]


def _event(user: str, item: str, timestamp: int) -> dict:
    return {"user_id": user, "item_id": item, "timestamp": int(timestamp)}


def rows_of(batches) -> set[tuple[str, str, int]]:
    """The (user, item, time) of every event of the batches."""
    return {(e["user_id"], e["item_id"], e["timestamp"]) for batch in batches for e in batch}


def logged(event_log: str) -> set[tuple[str, str, int]]:
    """Every event in the event log's Parquet files (local or ``s3://``)."""
    rows = set()
    columns = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    for path in event_files(event_log):
        with storage.open_input(path) as handle:
            table = pq.read_table(handle, columns=columns)
        rows |= set(zip(*(table.column(c).to_pylist() for c in columns)))
    return rows


def retrain_command(registry: str, event_log: str, output: str, *overrides: str) -> list[str]:
    """One retraining turn as the schedule runs it (cluster/README.md)."""
    command = ["recsys-dist", "--json", "retrain", "--registry", registry, "--events", event_log]
    return [*command, "--output", output, "--workers", "1", *overrides]


# A turn over the load's events that promotes on this tiny model: two warm epochs land within
# noise of the parent (tests/e2e/test_loop.py measured 0.5328 vs 0.5382), so the tolerance is
# wider than the default; half the idle users are replayed.
TURN = ("retrain.epochs=2", "retrain.tolerance=0.05", "retrain.replay=0.5")


def switch(load: Load, moved_at: float, version: str) -> dict:
    """The promotion seen by the load: from the registry's pointer moving (``moved_at``) to
    the first answer after which every answer names ``version``, and what was answered
    from a second before to five seconds after."""
    answered = [(t, s, v) for t, s, v in load.answers if s == 200]
    last_old = max((t for t, _, v in answered if t > moved_at and v != version), default=moved_at)
    all_new = next(t for t, _, v in answered if t > last_old and v == version)
    during = load.between(moved_at - 1, all_new + 5)
    return {
        "promotion_to_all_replicas_s": round(all_new - moved_at, 2),
        "requests_during_switch": len(during),
        "non_2xx_during_switch": sum(not 200 <= s < 300 for _, s, _ in during),
    }


def ack_latency(load: Load) -> dict:
    """Event -> object storage: with ``event_log_ack: published`` an event is acknowledged
    once its Parquet file is written, so the answer's time is when it was in S3."""
    ms = np.asarray([answered - sent for sent, answered, _ in load.acknowledged]) * 1000
    return {
        "event_batches": len(ms),
        "event_to_s3_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "event_to_s3_p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="a short path (Ray's sockets)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second")
    args = parser.parse_args(argv)
    from serve_security import moto_s3  # bench/ is on sys.path as the script's directory

    root = Path(args.workdir or tempfile.mkdtemp(prefix="cl", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    s3 = f"{moto_s3()}/loop"
    redis = _redis_server(root)
    cluster = LocalCluster(root / "cluster", env={"REDIS_URL": redis.url})
    load = None
    try:
        raw, run = _trained(root)
        registry, event_log = f"{s3}/registry", f"{s3}/event_log"
        v1 = _register_current(registry, run)
        keys = KeysFile(str(root / "keys.json"))
        key = keys.create(f"bench-{secrets.token_hex(4)}", ["recommend", "events:write"])
        values = {"s3://BUCKET": s3, "/mnt/wal": str(root / "wal"), KEYS_PATH: keys.path}
        cluster.start_head(cpus=0)
        for name in ("w1", "w2"):
            cluster.add_node(name, cpus=2)
        config = one_host(serve_config(), values, free_port())
        started = time.monotonic()
        cluster.deploy(config)
        result: dict = {"deploy_s": round(time.monotonic() - started, 1)}
        users, batches = event_batches(raw)
        load = Load(
            f"http://127.0.0.1:{config['http_options']['port']}", key, users, batches, args.rate
        )
        load.thread.start()
        cluster.wait_until(lambda: not load.batches, "every batch acknowledged", 600)
        result |= ack_latency(load)
        started = time.monotonic()
        submission = cluster.submit(
            *retrain_command(registry, event_log, f"{s3}/retraining", *TURN)
        )
        job = cluster.wait_for_job(submission)
        result["retrain_wall_s"] = round(time.monotonic() - started, 1)
        turn = json.loads(cluster.job_logs(submission).strip().splitlines()[-1])
        assert job["status"] == "SUCCEEDED" and turn["promoted"], turn
        moved_at = Registry(registry).pointer().updated_at
        cluster.wait_until(lambda: serving(load, turn["candidate"]), "the new version", 300)
        time.sleep(5)  # the window after the switch that switch() reports on
        result |= switch(load, moved_at, turn["candidate"])
        result |= {"parent": v1, "candidate": turn["candidate"], "rate": args.rate}
        print(json.dumps(result), flush=True)
        print(_summary(result))
    finally:
        if load is not None:
            load.stop.set()
        cluster.stop()
        redis.terminate()
    return 0


KEYS_PATH = "/etc/recsys-dist/keys/keys.json"  # where the manifests mount the keys Secret


def serving(load: Load, version: str) -> bool:
    """Whether the recent answers all name ``version``."""
    recent = [v for _, s, v in load.answers[-20:] if s == 200]
    return len(recent) >= 10 and set(recent) == {version}


def _trained(root: Path) -> tuple[Path, Path]:
    """A generated log the size of the test suite's, prepared and trained briefly on a local
    Ray of this process (the cluster serves it, so only its shape matters for timing)."""
    import ray

    from recsys_dist.config import load_config
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.synthetic import generate_dataset
    from recsys_dist.train.trainer import train

    raw, prepared, run = root / "raw", root / "prepared", root / "run"
    if not (run / "model").exists():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        generate_dataset(str(raw), users=400, items=200, categories=4, seed=3, overwrite=True)
        config = load_config(None, ["train.workers=1", "train.epochs=10", "data.max_len=20"])
        prepare_dataset(str(raw), str(prepared), config.data)
        train(str(prepared), str(run), config)
        ray.shutdown()
    return raw, run


def _register_current(registry: str, run: Path) -> str:
    version = Registry(registry).register(str(run))
    Registry(registry).promote(version.id)
    return version.id


def _redis_server(root: Path) -> subprocess.Popen:
    """A private redis-server on loopback, nothing persisted; ``.url`` is its address."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        + ["--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
    )
    server.url = f"redis://127.0.0.1:{port}/0"
    return server


def _summary(result: dict) -> str:
    return (
        f"deploy {result['deploy_s']} s; event -> S3 p50 {result['event_to_s3_p50_ms']} ms, "
        f"p99 {result['event_to_s3_p99_ms']} ms ({result['event_batches']} batches); retrain "
        f"{result['retrain_wall_s']} s; promotion -> all replicas "
        f"{result['promotion_to_all_replicas_s']} s, {result['requests_during_switch']} "
        f"requests meanwhile, {result['non_2xx_during_switch']} not 2xx"
    )


def serve_config() -> dict:
    """``serve/recommender.yaml``: the same Serve config the RayService embeds."""
    return yaml.safe_load(SERVE_CONFIG.read_text())


if __name__ == "__main__":
    sys.exit(main())
