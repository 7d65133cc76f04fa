"""Online serving under load: latency, throughput, event reflection and autoscaling.

For each catalogue (MovieLens-100K from ``../shared`` when present, and a generated catalogue
of 100,000 items) this script prepares the data, trains a model briefly (latency depends on the
model's shape and the catalogue, not on how well it is trained), starts the service on a local
Ray and drives it over loopback HTTP with a bounded asynchronous client:

1. ``POST /v1/recommend`` at a fixed arrival rate (open loop: requests are sent on schedule
   whether or not earlier ones have answered, at most ``--concurrency`` in flight) with 1 and
   with 2 replicas: p50/p99 latency, achieved QPS, errors;
2. event reflection: take a user's current top-1 item, ``POST /v1/events`` with it, ask for a
   recommendation again and check the item is gone (it is now seen): the time from sending the
   event to having the reflecting answer;
3. autoscaling (generated catalogue): a load step (low, high, low) against an autoscaling
   deployment (1-2 replicas), sampling the replica count once a second.

    python bench/serve_load.py                      # everything; prints JSON lines + a summary
    python bench/serve_load.py --skip-ml100k --qps 100 --seconds 20

Targets (issue 4, 2 CPU cores): p99 < 50 ms at 100 QPS with the 100k-item catalogue; an event
reflected in < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import run_layout  # noqa: E402
from recsys_dist.config import ServeConfig, load_config  # noqa: E402

ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"
QUICK_TRAIN = ["train.workers=1", "train.epochs=1", "train.eval_every=1", "train.time_budget_s=30"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--skip-autoscaling", action="store_true")
    parser.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default="haproxy",
        help="HAProxy in front of the replicas (what `recsys-dist serve` starts) or Serve's "
        "Python proxy actor",
    )
    parser.add_argument("--redis-url", help="use the Redis store at this URL (default: embedded)")
    args = parser.parse_args(argv)
    import ray

    from recsys_dist.serving.app import use_haproxy_ingress

    if args.ingress == "haproxy":
        use_haproxy_ingress()
        # Replicas stop after a short drain: HAProxy runs on this node and learns it at once.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    else:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-serve-"))
    catalogues = [("generated-100k", _generated(work))]
    if not args.skip_ml100k and (ML100K / "ml-100k.inter").exists():
        catalogues.insert(0, ("ml-100k", _ml100k(work)))
    results = []
    for name, (run_dir, users) in catalogues:
        for replicas in (1, 2):
            result = _measure(run_dir, users, replicas, args)
            result.update(catalogue=name, replicas=replicas, ingress=args.ingress)
            result.update(store="redis" if args.redis_url else "embedded")
            results.append(result)
            print(json.dumps(result), flush=True)
    if not args.skip_autoscaling:
        run_dir, users = catalogues[-1][1]
        result = _autoscaling(run_dir, users, args)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(_summary(results))
    return 0


def _ml100k(work: Path) -> tuple[Path, list[str]]:
    from recsys_dist.data.importers import import_dataset

    import_dataset("recbole", str(ML100K), str(work / "ml100k-raw"), overwrite=True)
    return _train(work / "ml100k-raw", work / "ml100k")


def _generated(work: Path) -> tuple[Path, list[str]]:
    from recsys_dist.data.synthetic import generate_dataset

    generate_dataset(
        str(work / "gen-raw"), users=3000, items=100_000, categories=50, seed=0, overwrite=True
    )
    return _train(work / "gen-raw", work / "gen")


def _train(raw: Path, out: Path) -> tuple[Path, list[str]]:
    """Prepare and train into ``out`` (a model already there, from an earlier run with the
    same ``--workdir``, is reused)."""
    import pyarrow.parquet as pq

    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.train.trainer import train

    if not Path(run_layout.model_dir(out / "run")).exists():
        config = load_config(None, QUICK_TRAIN)
        prepare_dataset(str(raw), str(out / "prepared"), config.data)
        train(str(out / "prepared"), str(out / "run"), config)
    users = pq.read_table(out / "prepared" / "users", columns=["user_id"]).column(0).to_pylist()
    return out / "run", users


def _start(run_dir: Path, deployment: dict, redis_url: str | None = None) -> str:
    from recsys_dist.serving.app import run_service

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    instance = f"bench{port}"
    settings = ServeConfig(
        instance=instance,
        wal_dir=str(run_dir.parent / f"wal-{instance}"),
        event_log_dir=str(run_dir.parent / f"log-{instance}"),
        **({"store": "redis", "redis_url": redis_url} if redis_url else {}),
    )
    return run_service(str(run_dir), settings, port=port, deployment=deployment)


def _stop() -> None:
    from ray import serve

    serve.shutdown()


def _measure(run_dir: Path, users: list[str], replicas: int, args) -> dict:
    url = _start(run_dir, {"num_replicas": replicas}, args.redis_url)
    try:
        asyncio.run(_load(url, users, args.qps, 3.0, args.concurrency))  # warm-up
        load = asyncio.run(_load(url, users, args.qps, args.seconds, args.concurrency))
        reflect = asyncio.run(_reflection(url, users, trials=50))
    finally:
        _stop()
    return {**load, **reflect}


async def _load(
    url: str, users: list[str], qps: float, seconds: float, limit: int, headers=None
) -> dict:
    """Open-loop arrivals at ``qps``; latencies of the answered requests, and the failures."""
    rng = np.random.default_rng(0)
    gate = asyncio.Semaphore(limit)
    latencies, statuses = [], []

    async def one(client: httpx.AsyncClient, user: str) -> None:
        async with gate:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/recommend", json={"user_id": user, "k": 10})
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
        tasks, start = [], time.perf_counter()
        for n in range(int(qps * seconds)):
            delay = start + n / qps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival schedule, not synchronisation
            tasks.append(asyncio.create_task(one(client, users[rng.integers(len(users))])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(statuses),
        "ok": int(sum(s == 200 for s in statuses)),
        "qps_offered": qps,
        "qps_achieved": round(len(statuses) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


async def _reflection(url: str, users: list[str], trials: int) -> dict:
    """Event sent → an answer that reflects it (the posted item, the old top-1, is gone)."""
    times, reflected = [], 0
    async with httpx.AsyncClient(timeout=30) as client:
        for user in users[:trials]:
            before = (await client.post(f"{url}/v1/recommend", json={"user_id": user})).json()
            top = before["items"][0]["item_id"]
            event = {"user_id": user, "item_id": top, "timestamp": int(time.time())}
            started = time.perf_counter()
            await client.post(f"{url}/v1/events", json={"events": [event]})
            after = (await client.post(f"{url}/v1/recommend", json={"user_id": user})).json()
            times.append(time.perf_counter() - started)
            reflected += top not in {item["item_id"] for item in after["items"]}
    ms = np.asarray(times) * 1000
    return {
        "reflect_trials": trials,
        "reflected": reflected,
        "reflect_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "reflect_max_ms": round(float(ms.max()), 1),
    }


def _autoscaling(run_dir: Path, users: list[str], args) -> dict:
    """A load step against 1-2 autoscaling replicas; the replica count, once a second."""
    from ray import serve

    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 2,
        "downscale_delay_s": 10,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }
    url = _start(run_dir, {"autoscaling_config": autoscaling}, args.redis_url)
    timeline: list[tuple[float, int, str]] = []
    started = time.perf_counter()

    def sample(phase: str) -> None:
        status = serve.status().applications["recsys_dist"].deployments["recommender"]
        running = status.replica_states.get("RUNNING", 0)
        timeline.append((round(time.perf_counter() - started, 1), running, phase))

    async def phase(name: str, qps: float, seconds: float) -> None:
        load = asyncio.create_task(_load(url, users, qps, seconds, args.concurrency))
        while not load.done():
            sample(name)
            await asyncio.sleep(1)  # the sampling period
        await load

    async def step() -> None:
        await phase("low", 5, 10)
        await phase("high", args.qps * 2, 30)
        await phase("low", 5, 40)

    try:
        asyncio.run(step())
    finally:
        _stop()
    counts = [count for _, count, _ in timeline]
    return {
        "autoscaling": autoscaling,
        "max_replicas_seen": max(counts),
        "final_replicas": counts[-1],
        "timeline": timeline,
    }


def _summary(results: list[dict]) -> str:
    machine = f"{os.cpu_count()} vCPU {platform.machine()}"
    rows = [
        "| date | machine | ingress | store | catalogue | replicas | QPS offered | QPS achieved "
        "| ok/requests | p50 ms | p99 ms | event→reflected p50 / max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "catalogue" not in r:
            continue
        cells = [
            date.today(),
            machine,
            r["ingress"],
            r["store"],
            r["catalogue"],
            r["replicas"],
            r["qps_offered"],
            r["qps_achieved"],
            f"{r['ok']}/{r['requests']}",
            r["p50_ms"],
            r["p99_ms"],
            f"{r['reflect_p50_ms']} / {r['reflect_max_ms']} "
            f"({r['reflected']}/{r['reflect_trials']} reflected)",
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
