"""The service's guards through a real Serve deployment and real HTTP: scopes under any route
prefix, the costliest request a client may send, a keys file that must exist, and a Redis
partition that makes requests fail fast (never hang) and health say so.

The session's shared tiny model (tests/conftest.py) is served; tests/serving/test_api.py runs
the same scope matrix against the app alone, in the fast tier.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid

import httpx
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema
from recsys_dist.config import ServeConfig
from recsys_dist.serving import app, schemas
from recsys_dist.serving.auth import KeysFile, KeysFileError

from .test_serve import free_port, stop

pytestmark = pytest.mark.slow

# (method, path, body, the scopes a key needs; None: open), for the shared run's first user
ENDPOINTS = {
    "healthz": ("GET", "/healthz", None, None),
    "openapi": ("GET", "/openapi.json", None, None),
    "model": ("GET", "/v1/model", None, set()),
    "recommend": ("POST", "/v1/recommend", {"user_id": "{user}"}, {"recommend"}),
    "explain-stored": (
        "POST",
        "/v1/recommend",
        {"user_id": "{user}", "explain": True},
        {"recommend", "users:read"},
    ),
    "explain-own": (
        "POST",
        "/v1/recommend",
        {"history": [{"item_id": "{item}", "timestamp": 10}], "explain": True},
        {"recommend"},
    ),
    "events": (
        "POST",
        "/v1/events",
        {"events": [{"user_id": "scope-test", "item_id": "{item}", "timestamp": 5}]},
        {"events:write"},
    ),
    "history": ("GET", "/v1/users/{user}/history", None, {"users:read"}),
    "interests": ("GET", "/v1/users/{user}/interests", None, {"users:read"}),
}
KEYS = {
    "recommend": ["recommend"],
    "events": ["events:write"],
    "users": ["users:read"],
    "recommend+users": ["recommend", "users:read"],
}


def settings(root, **more) -> ServeConfig:
    instance = f"g{uuid.uuid4().hex[:8]}"
    return ServeConfig(
        instance=instance,
        wal_dir=str(root / f"wal-{instance}"),
        event_log_dir=str(root / f"log-{instance}"),
        flush_seconds=3600.0,
        **more,
    )


def fill(value, user: str, item: str):
    """The endpoint's path or body with the shared run's user and item put in."""
    if isinstance(value, str):
        return value.replace("{user}", user).replace("{item}", item)
    if isinstance(value, dict):
        return {k: fill(v, user, item) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, user, item) for v in value]
    return value


def expected(scopes: set[str] | None, caller: str) -> int:
    if scopes is None:
        return 200
    if caller in ("no key", "bad key"):
        return 401
    return 200 if scopes <= set(KEYS[caller]) else 403


@pytest.fixture(scope="module")
def shared(trained_run):
    root = trained_run.root
    events = pq.read_table(root / "raw" / schema.EVENTS_DIR).to_pandas()
    return root, str(events.user_id.iloc[0]), str(events.item_id.iloc[0])


class Keyed:
    """Two keyed applications on one HTTP port, at ``/`` and at ``/recs``, for every test of
    :class:`TestKeyedService` (one Serve start for both)."""

    def __init__(self, urls: dict[str, str], headers: dict[str, dict]) -> None:
        self.urls, self.headers = urls, headers


@pytest.fixture(scope="class")
def keyed(shared, tmp_path_factory):
    root, _, _ = shared
    keys = KeysFile(str(tmp_path_factory.mktemp("keys") / "keys.json"))
    secret_of = {name: keys.create(name, scopes) for name, scopes in KEYS.items()}
    headers = {"no key": {}, "bad key": {"Authorization": "Bearer rsd_not-a-key"}}
    headers |= {name: {"Authorization": f"Bearer {s}"} for name, s in secret_of.items()}
    port, configs, urls = free_port(), [], {}
    try:
        for prefix, name in (("/", "recs_root"), ("/recs", "recs_prefixed")):
            configs.append(settings(root, api_keys_file=keys.path, max_body_bytes=2_000_000))
            urls[prefix] = app.run_service(
                str(root / "run"), configs[-1], port=port, route_prefix=prefix, name=name
            )
        yield Keyed(urls, headers)
    finally:
        for config in configs:
            stop(config)


class TestKeyedService:
    def test_scopes_hold_under_the_root_and_under_a_route_prefix(self, shared, keyed):
        """Every endpoint x every scope x no key, through Serve, at ``/`` and at ``/recs`` at
        once: the prefix must change nothing."""
        _, user, item = shared
        wrong = {}
        for prefix, url in keyed.urls.items():
            for (name, (method, path, body, scopes)), caller in itertools.product(
                ENDPOINTS.items(), keyed.headers
            ):
                answer = httpx.request(
                    method,
                    url + fill(path, user, item),
                    json=fill(body, user, item),
                    headers=keyed.headers[caller],
                    timeout=30,
                )
                if answer.status_code != expected(scopes, caller):
                    wrong[prefix, name, caller] = (answer.status_code, answer.text[:120])
        assert not wrong, wrong
        explained = httpx.post(
            keyed.urls["/recs"] + "/v1/recommend",
            json={"user_id": user, "explain": True},
            headers=keyed.headers["recommend+users"],
        ).json()
        assert explained["items"][0]["because"], "a key with users:read is given the reasons"

    def test_the_costliest_filters_do_not_stall_the_replica(self, shared, keyed, trained_run):
        """The most a request may ask of the filters (every category it may name, the
        largest item lists) is answered within a bound, and so are plain requests sent beside
        it; more categories than the cap are refused before any work."""
        _, user, _ = shared
        catalogue = pq.read_table(trained_run.raw / schema.ITEMS_DIR).to_pylist()
        names = sorted({name for row in catalogue for name in row[schema.CATEGORIES]})
        items = [row[schema.ITEM_ID] for row in catalogue]
        worst = {
            "user_id": user,
            "categories": (names * schemas.MAX_CATEGORIES)[: schemas.MAX_CATEGORIES],
            "allow_items": (items * schemas.MAX_LIST_ITEMS)[: schemas.MAX_LIST_ITEMS],
            "deny_items": [f"unknown-{n}" for n in range(schemas.MAX_LIST_ITEMS)],
        }
        url, headers = keyed.urls["/"], keyed.headers["recommend"]

        async def beside() -> tuple[httpx.Response, float, list[float]]:
            async with httpx.AsyncClient(timeout=60, headers=headers) as client:
                started = time.perf_counter()
                costly = asyncio.create_task(client.post(f"{url}/v1/recommend", json=worst))
                plain = []
                while not costly.done():
                    began = time.perf_counter()
                    answer = await client.post(f"{url}/v1/recommend", json={"user_id": user})
                    assert answer.status_code == 200, answer.text
                    plain.append(time.perf_counter() - began)
                return await costly, time.perf_counter() - started, plain

        answer, seconds, plain = asyncio.run(beside())
        assert answer.status_code == 200 and answer.json()["items"], answer.text
        # docs/benchmarks.md, "The costliest request": at 100k items, every one of 50
        # categories of ~2,600 items and the same lists take ~60 ms; this catalogue is tiny.
        assert seconds < 2.0 and max(plain) < 2.0, (seconds, plain)
        over = {**worst, "categories": [f"c{n}" for n in range(schemas.MAX_CATEGORIES + 1)]}
        refused = httpx.post(f"{url}/v1/recommend", json=over, headers=headers, timeout=30)
        assert refused.status_code == 422 and "categories" in refused.text


def test_a_missing_keys_file_refuses_to_start(shared, tmp_path):
    root, _, _ = shared
    config = settings(root, api_keys_file=str(tmp_path / "typo.json"))
    with pytest.raises(KeysFileError, match="typo.json: no such file"):
        app.run_service(str(root / "run"), config, port=free_port())


class PacedLoad:
    """Recommend and event requests at a steady pace from a thread; each answer's status and
    how long it took."""

    RATE = 20.0

    def __init__(self, url: str, user: str, item: str) -> None:
        self.url, self.user, self.item = url, user, item
        self.answers: list[tuple[float, int, float]] = []  # (sent at, status, seconds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                sent = time.monotonic()
                self.answers.append((sent, self.one(client, n), time.monotonic() - sent))
                self.stop.wait(1 / self.RATE)

    def one(self, client: httpx.Client, n: int) -> int:
        """One request's status; 0 when none came (a refused or dropped connection)."""
        try:
            if n % 2:
                body = {"user_id": self.user}
                return client.post(f"{self.url}/v1/recommend", json=body).status_code
            event = {"user_id": self.user, "item_id": self.item, "timestamp": 10**9 + n}
            return client.post(f"{self.url}/v1/events", json={"events": [event]}).status_code
        except httpx.HTTPError:
            return 0

    def since(self, moment: float) -> list[tuple[float, int, float]]:
        return [a for a in self.answers if a[0] >= moment]


def test_a_redis_partition_fails_requests_fast_and_health_says_so(shared, redis_server):
    """The real redis-server is stopped under a paced load: every request is still answered
    within a bound (503, nothing acknowledged), ``/healthz`` turns 503 naming the store; once
    it is back, the same replicas answer 200 again."""
    root, user, item = shared
    redis = redis_server
    config = settings(root, store="redis", redis_url=redis.url)
    url = app.run_service(str(root / "run"), config, port=free_port())
    load = PacedLoad(url, user, item)
    load.thread.start()
    try:
        wait_for(lambda: [s for _, s, _ in load.answers[-6:]] == [200] * 6, "a steady load")
        cut = time.monotonic()
        redis.stop()
        wait_for(lambda: len(load.since(cut)) >= 20, "requests during the partition")
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "degraded" and "unreachable" in health.json()["store"]
        during = load.since(cut)
        assert {status for _, status, _ in during} <= {200, 503}, during
        assert 503 in {status for _, status, _ in during}
        assert max(seconds for _, _, seconds in during) < 15, during  # failed fast, no hang
        redis.start()
        back = time.monotonic()
        wait_for(lambda: [s for _, s, _ in load.since(back)][-6:] == [200] * 6, "recovery")
        assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    finally:
        load.stop.set()
        load.thread.join()
        stop(config)


def wait_for(condition, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # a poll interval, bounded by the deadline
