"""What safety costs the online service: authentication, publish-before-acknowledge, fuzzing.

On a local Ray with a model trained briefly on a generated log (latency depends on the model's
shape and the catalogue, not on its quality), over loopback HTTP:

1. **Authentication**: ``POST /v1/recommend`` at a fixed arrival rate (open loop, as
   ``bench/serve_load.py``) against the same service without and with ``serve.api_keys_file``
   (one key, scope ``recommend``, a Bearer header on every request), alternated twice so drift
   hits both alike: p50/p99 and their difference.
2. **Acknowledgement**: ``POST /v1/events`` (one event per request, ``--ack-concurrency`` in
   flight) with ``serve.event_log_ack=wal`` (fsynced in the WAL) and ``=published`` (in a
   Parquet file of ``serve.event_log_dir``), the log on local disk and on S3 (moto's server on
   loopback: no network latency, so a real bucket adds its PUT time on top).
3. **Fuzzing**: Schemathesis against the service's OpenAPI schema, valid and invalid requests,
   ``--fuzz-examples`` per operation and mode: the number sent and the 5xx answers (must be 0).
4. **The costliest request**: ``POST /v1/recommend`` with the largest filters a request may
   carry (every category it may name, the largest ones first, repeated up to
   ``--worst-categories`` entries, and full ``allow_items``/``deny_items`` lists): its own
   latency, and the latency of plain requests sent while it runs (a request that holds the
   replica's event loop delays every other).

    python bench/serve_security.py                 # prints JSON lines and a summary
    python bench/serve_security.py --qps 100 --seconds 20 --fuzz-examples 200

Targets (issue 15): authentication adds < 1 ms at p99 at 100 QPS; no 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_load import _load, _stop, _train  # noqa: E402
from recsys_dist.config import ServeConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--acks", type=int, default=400, help="events posted per ack mode")
    parser.add_argument("--ack-concurrency", type=int, default=8)
    parser.add_argument("--fuzz-examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="off/on alternations for keys")
    parser.add_argument(
        "--worst-categories", type=int, default=10_000, help="category entries in the costliest"
    )
    parser.add_argument("--parts", default="auth,ack,fuzz,cost", help="which parts to run")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    import ray

    from recsys_dist.serving.app import use_haproxy_ingress

    use_haproxy_ingress()
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    s3 = moto_s3()  # before Ray starts, so its workers inherit the endpoint
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-security-"))
    from recsys_dist.data.synthetic import generate_dataset

    raw = work / "raw"
    if not raw.exists():
        generate_dataset(str(raw), users=3000, items=args.items, categories=50, seed=0)
    run_dir, users = _train(raw, work / "model")
    results = []
    if "auth" in parts:
        results += [_key_check_cost(work), _authentication(run_dir, users, work, args)]
        print(json.dumps(results[-2]), json.dumps(results[-1]), sep="\n", flush=True)
    for where in ("local", "s3") if "ack" in parts else ():
        for ack in ("wal", "published"):
            log_dir = f"{s3}/log-{ack}" if where == "s3" else str(work / f"log-{where}-{ack}")
            results.append(_acknowledgement(run_dir, users, work, ack, log_dir, args))
            results[-1]["event_log"] = where
            print(json.dumps(results[-1]), flush=True)
    if "fuzz" in parts:
        results.append(_fuzz(run_dir, work, args.fuzz_examples))
        print(json.dumps(results[-1]), flush=True)
    if "cost" in parts:
        results.append(_costliest_request(run_dir, users, raw, work, args.worst_categories))
        print(json.dumps(results[-1]), flush=True)
    print(_summary(results))
    return 0


def _start(run_dir: Path, work: Path, **settings) -> str:
    from recsys_dist.serving.app import run_service

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    instance = f"bench{port}"
    config = ServeConfig(
        instance=instance,
        wal_dir=str(work / f"wal-{instance}"),
        event_log_dir=settings.pop("event_log_dir", str(work / f"log-{instance}")),
        **settings,
    )
    return run_service(str(run_dir), config, port=port)


def _shutdown(url: str) -> None:
    """Stop the application and its instance's detached actors (the store and the event
    log), so runs do not pile up idle actors that slow the later ones."""
    import ray

    _stop()
    instance = f"bench{url.rsplit(':', 1)[1]}"
    for name in (f"{instance}_user_store", f"{instance}_event_log"):
        try:
            ray.kill(ray.get_actor(name, namespace="recsys_dist"))
        except ValueError:
            pass


def _authentication(run_dir: Path, users: list[str], work: Path, args) -> dict:
    from recsys_dist.serving.auth import KeysFile

    keys = str(work / "keys.json")
    Path(keys).unlink(missing_ok=True)  # a fresh key each run (the file keeps only hashes)
    secret = KeysFile(keys).create("bench", ["recommend"])
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for mode in ("off", "on", "on", "off") * args.rounds:  # ABBA: drift hits both alike
        url = _start(run_dir, work, **({"api_keys_file": keys} if mode == "on" else {}))
        headers = {"Authorization": f"Bearer {secret}"} if mode == "on" else None
        try:
            asyncio.run(_load(url, users, args.qps, 3.0, 64, headers))  # warm-up
            runs[mode].append(asyncio.run(_load(url, users, args.qps, args.seconds, 64, headers)))
        finally:
            _shutdown(url)
    mean = {
        mode: {q: round(float(np.mean([r[q] for r in rs])), 2) for q in ("p50_ms", "p99_ms")}
        for mode, rs in runs.items()
    }
    return {
        "part": "authentication",
        "qps": args.qps,
        "seconds_per_run": args.seconds,
        "runs": runs,
        "without_keys": mean["off"],
        "with_keys": mean["on"],
        "added_p50_ms": round(mean["on"]["p50_ms"] - mean["off"]["p50_ms"], 2),
        "added_p99_ms": round(mean["on"]["p99_ms"] - mean["off"]["p99_ms"], 2),
    }


def _key_check_cost(work: Path, calls: int = 20_000) -> dict:
    """What the middleware does per request, timed alone: look up and check one Bearer key
    (SHA-256 of the secret, a dict lookup, the scope, the token bucket)."""
    from recsys_dist.serving.auth import KeyRing, KeysFile

    keys = str(work / "keys-micro.json")
    Path(keys).unlink(missing_ok=True)
    secret = KeysFile(keys).create("micro", ["recommend"])
    ring = KeyRing(keys, reload_s=3600.0, rate=1e9, burst=1e9)
    header = f"Bearer {secret}"
    started = time.perf_counter()
    for _ in range(calls):
        assert not ring.check(header, "recommend").status
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    return {"part": "key_check", "calls": calls, "per_call_us": round(per_call_us, 2)}


def _acknowledgement(run_dir, users, work: Path, ack: str, log_dir: str, args) -> dict:
    url = _start(run_dir, work, event_log_ack=ack, event_log_dir=log_dir)
    try:
        latencies = asyncio.run(_post_events(url, users, args.acks, args.ack_concurrency))
    finally:
        _shutdown(url)
    ms = np.asarray(latencies) * 1000
    return {
        "part": "acknowledgement",
        "event_log_ack": ack,
        "events": len(latencies),
        "concurrency": args.ack_concurrency,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


async def _post_events(url: str, users: list[str], count: int, concurrency: int) -> list[float]:
    """``count`` single-event posts, ``concurrency`` at a time; each one's answer time."""
    latencies: list[float] = []
    queue = list(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            n = queue.pop()
            event = {"user_id": users[n % len(users)], "item_id": f"i{n}", "timestamp": 10**9 + n}
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/events", json={"events": [event]})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies


def _fuzz(run_dir: Path, work: Path, examples: int) -> dict:
    """Schemathesis's valid and invalid requests for every operation; counts what was sent."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    url = _start(run_dir, work, max_body_bytes=100_000)
    sent, server_errors = {}, []
    try:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{operation.label} {mode.value}"
                strategy = operation.as_strategy(generation_mode=mode)
                try:
                    _fuzzing(url, label, strategy, examples, sent, server_errors)()
                except Unsatisfiable:  # no parameter and no body to make invalid (/healthz)
                    continue
    finally:
        _shutdown(url)
    return {
        "part": "fuzz",
        "max_examples_per_operation_and_mode": examples,
        "requests": sum(sent.values()),
        "per_operation": sent,
        "server_errors": len(server_errors),
        "first_errors": server_errors[:5],
    }


def _fuzzing(url: str, label: str, strategy, examples: int, sent: dict, errors: list):
    """One operation and mode's Hypothesis test: it calls the service and counts."""
    from hypothesis import HealthCheck, given, settings

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        response = case.call(base_url=url, timeout=30)
        sent[label] = sent.get(label, 0) + 1
        if response.status_code >= 500:
            errors.append((label, response.status_code, response.text[:200]))

    return call


def _costliest_request(run_dir: Path, users: list[str], raw: Path, work: Path, entries: int):
    """The worst filters one request may send, timed alone and beside plain requests."""
    import pyarrow.parquet as pq

    from recsys_dist import schema
    from recsys_dist.serving import schemas

    catalogue = pq.read_table(raw / schema.ITEMS_DIR).to_pylist()
    sizes: dict[str, int] = {}
    for row in catalogue:
        for name in row[schema.CATEGORIES]:
            sizes[name] = sizes.get(name, 0) + 1
    largest = sorted(sizes, key=sizes.get, reverse=True)
    most = getattr(schemas, "MAX_CATEGORIES", len(largest))  # the cap, where there is one
    names = largest[:most]
    ids = [row[schema.ITEM_ID] for row in catalogue][: schemas.MAX_LIST_ITEMS * 2]
    worst = {
        "user_id": users[0],
        "k": 10,
        "categories": (names * (entries // len(names) + 1))[:entries],
        "allow_items": ids[: schemas.MAX_LIST_ITEMS],
        "deny_items": ids[schemas.MAX_LIST_ITEMS :],
    }
    capped = {**worst, "categories": names}
    url = _start(run_dir, work, max_body_bytes=10_000_000)
    try:
        found = {}
        for label, body in (("worst", worst), ("capped", capped)):
            found[label] = asyncio.run(_beside_plain(url, users, body))
    finally:
        _shutdown(url)
    return {
        "part": "costliest_request",
        "catalogue_items": len(catalogue),
        "categories": len(largest),
        "largest_category_items": sizes[largest[0]],
        **found,
    }


async def _beside_plain(url: str, users: list[str], body: dict, rounds: int = 5) -> dict:
    """``body`` sent ``rounds`` times one after another, with plain requests every 20 ms
    meanwhile; before that, the same plain requests alone."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def plain(n: int) -> tuple[float, int]:
            started = time.perf_counter()
            answer = await client.post(f"{url}/v1/recommend", json={"user_id": users[n]})
            return time.perf_counter() - started, answer.status_code

        alone = [await plain(n % len(users)) for n in range(50)]
        assert {status for _, status in alone} == {200}, alone
        alone = [seconds for seconds, _ in alone]
        costly: list[float] = []
        status: list[int] = []

        async def send_costly() -> None:
            for _ in range(rounds):
                started = time.perf_counter()
                answer = await client.post(f"{url}/v1/recommend", json=body)
                costly.append(time.perf_counter() - started)
                status.append(answer.status_code)

        task = asyncio.create_task(send_costly())
        beside, n = [], 0
        while not task.done():
            beside.append(asyncio.create_task(plain(n % len(users))))
            n += 1
            await asyncio.sleep(0.02)  # the arrival schedule, not synchronisation
        await task
        answers = await asyncio.gather(*beside)
        beside_s = [seconds for seconds, _ in answers]
        refused = sum(status != 200 for _, status in answers)

    def ms(values, q):
        return round(float(np.percentile(np.asarray(values) * 1000, q)), 1)

    answered = [seconds for seconds, code in zip(costly, status, strict=True) if code == 200]
    return {
        "category_entries": len(body["categories"]),
        "status": status,
        "costly_p50_ms": ms(answered, 50) if answered else None,
        "costly_max_ms": ms(answered, 100) if answered else None,
        "plain_alone_p50_ms": ms(alone, 50),
        "plain_alone_p99_ms": ms(alone, 99),
        "plain_beside_p50_ms": ms(beside_s, 50),
        "plain_beside_max_ms": ms(beside_s, 100),
        "plain_beside": len(beside_s),
        "plain_beside_not_200": refused,
    }


def moto_s3() -> str:
    """A moto S3 server on loopback and the AWS environment pointing at it; the bucket URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench"


def _summary(results: list[dict]) -> str:
    lines = []
    for r in results:
        if r["part"] == "key_check":
            lines.append(f"key check alone: {r['per_call_us']} us per request")
        if r["part"] == "authentication":
            lines.append(
                f"authentication at {r['qps']:.0f} QPS: p99 {r['without_keys']['p99_ms']} ms "
                f"without keys, {r['with_keys']['p99_ms']} ms with ({r['added_p99_ms']:+} ms); "
                f"p50 {r['added_p50_ms']:+} ms"
            )
        if r["part"] == "acknowledgement":
            lines.append(
                f"ack={r['event_log_ack']:<9} log on {r['event_log']:<5}: p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms ({r['events']} events, {r['concurrency']} in flight)"
            )
        if r["part"] == "costliest_request":
            for label in ("worst", "capped"):
                c = r[label]
                lines.append(
                    f"{label} filters ({c['category_entries']} category entries, status "
                    f"{c['status']}): p50 {c['costly_p50_ms']} ms; plain requests beside it "
                    f"p50 {c['plain_beside_p50_ms']} ms, max {c['plain_beside_max_ms']} ms, "
                    f"{c['plain_beside_not_200']} of {c['plain_beside']} refused "
                    f"(alone p50 {c['plain_alone_p50_ms']} ms)"
                )
        if r["part"] == "fuzz":
            lines.append(f"fuzz: {r['requests']} requests, {r['server_errors']} server errors")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
