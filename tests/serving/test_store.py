"""The online store's contract, run alike against both backends: the embedded Ray actor and a
real redis-server. ``merge_events`` is the reference every backend must match."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from recsys_dist.serving.store import (
    ActorStore,
    Event,
    History,
    StoreUnavailable,
    UserStore,
    merge_events,
)

ODD_IDS = ["a|b", "with space", "naïve ☕ 商品", "12:34:x", ":", "", "line\nbreak", '{"json": 1}']


class Backend:
    """Opens clients (each one a replica) of one fresh store, and removes the store afterwards.

    Clients are opened inside the test's own event loop (a Redis client's connections belong to
    the loop that uses them) and closed when their ``async with`` ends.
    """

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.name = f"test_{uuid.uuid4().hex[:12]}"  # the actor name or the Redis prefix
        self.redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
        if kind == "embedded":
            request.getfixturevalue("ray_session")
        self.max_history: int | None = None

    @contextlib.asynccontextmanager
    async def open(self, max_history: int = 50) -> AsyncIterator[UserStore]:
        if self.max_history is None:
            self.max_history = max_history
        assert max_history == self.max_history, "all clients of one store share max_history"
        if self.kind == "embedded":
            yield ActorStore(max_history, name=self.name)
            return
        from recsys_dist.serving.redis_store import RedisStore

        store = RedisStore(self.redis_url, max_history, prefix=self.name)
        try:
            yield store
        finally:
            await store.close()

    def remove(self) -> None:
        if self.max_history is None:
            return  # never opened
        if self.kind == "embedded":
            ActorStore(self.max_history, name=self.name).destroy()
            return
        import redis.asyncio as redis

        async def delete_prefix() -> None:
            client = redis.Redis.from_url(self.redis_url)
            keys = [key async for key in client.scan_iter(match=f"{self.name}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

        asyncio.run(delete_prefix())


@pytest.fixture(params=["embedded", "redis"])
def store(request) -> Backend:
    backend = Backend(request.param, request)
    yield backend
    backend.remove()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def pairs(history: History | None) -> list[tuple[int, str]]:
    assert history is not None
    return list(zip(history.timestamps, history.item_ids, strict=True))


def test_unknown_user_is_none(store):
    async def scenario():
        async with store.open() as s:
            assert await s.get("nobody") is None
            assert await s.get_many(["nobody", "nobody else"]) == [None, None]
            assert await s.get_many([]) == []
            assert await s.num_users() == 0

    run(scenario)


def test_append_orders_by_time(store):
    async def scenario():
        async with store.open() as s:
            await s.append([Event("u", "c", 30), Event("u", "a", 10), Event("u", "b", 20)])
            assert pairs(await s.get("u")) == [(10, "a"), (20, "b"), (30, "c")]
            await s.append([Event("u", "late", 15), Event("u", "early", 5)])  # out of order
            assert pairs(await s.get("u")) == [
                (5, "early"),
                (10, "a"),
                (15, "late"),
                (20, "b"),
                (30, "c"),
            ]
            found = await s.get("u")
            assert all(type(t) is int for t in found.timestamps)

    run(scenario)


def test_ties_keep_history_first_then_arrival_order(store):
    async def scenario():
        async with store.open() as s:
            await s.append([Event("u", "h1", 10), Event("u", "h2", 10), Event("u", "h3", 20)])
            await s.append([Event("u", "n1", 10), Event("u", "n0", 5), Event("u", "n2", 10)])
            assert pairs(await s.get("u")) == [
                (5, "n0"),
                (10, "h1"),
                (10, "h2"),
                (10, "n1"),
                (10, "n2"),
                (20, "h3"),
            ]
            await s.append([Event("u", "n3", 20), Event("u", "n4", 10)])
            assert pairs(await s.get("u"))[3:] == [
                (10, "n1"),
                (10, "n2"),
                (10, "n4"),
                (20, "h3"),
                (20, "n3"),
            ]

    run(scenario)


def test_many_ties_in_one_call_keep_arrival_order(store):
    async def scenario():
        rng = random.Random(11)
        events = [Event("u", f"e{k}", rng.randrange(0, 4)) for k in range(300)]
        async with store.open(max_history=500) as s:
            await s.append(events[:100])
            await s.append(events[100:])
            expected = merge_events(merge_events(History(), events[:100], 500), events[100:], 500)
            assert pairs(await s.get("u")) == pairs(expected)

    run(scenario)


def test_cut_keeps_the_most_recent(store):
    async def scenario():
        async with store.open(max_history=3) as s:
            await s.append([Event("u", f"i{t}", t) for t in (5, 1, 4, 2, 3)])
            assert pairs(await s.get("u")) == [(3, "i3"), (4, "i4"), (5, "i5")]
            await s.append([Event("u", "old", 0)])  # older than everything kept: cut at once
            assert pairs(await s.get("u")) == [(3, "i3"), (4, "i4"), (5, "i5")]
            await s.append([Event("u", "mid", 4), Event("u", "new", 9)])
            assert pairs(await s.get("u")) == [(4, "mid"), (5, "i5"), (9, "new")]

    run(scenario)


def test_seed_replaces_orders_and_cuts(store):
    async def scenario():
        async with store.open(max_history=3) as s:
            await s.append([Event("u", "online", 100), Event("v", "kept", 7)])
            loaded = await s.seed(
                [
                    ("u", History(["a", "b", "c", "d"], [1, 2, 3, 4])),
                    ("w", History(["z", "y"], [9, 8])),  # not in time order
                    ("empty", History()),
                ]
            )
            assert loaded == 3
            assert pairs(await s.get("u")) == [(2, "b"), (3, "c"), (4, "d")]  # online one gone
            assert pairs(await s.get("w")) == [(8, "y"), (9, "z")]
            assert pairs(await s.get("v")) == [(7, "kept")]  # users not seeded are untouched
            assert pairs(await s.get("empty")) == []  # known, with no events: not None
            assert await s.num_users() == 4
            await s.append([Event("w", "x", 8)])  # the seeded list is in order for appends
            assert pairs(await s.get("w")) == [(8, "y"), (8, "x"), (9, "z")]

    run(scenario)


def test_seed_in_chunks_and_from_a_generator(store):
    async def scenario():
        async with store.open(max_history=4) as s:
            users = ((f"user{n}", History([f"i{n}", "j"], [n, n + 1])) for n in range(2500))
            assert await s.seed(users) == 2500
            assert await s.num_users() == 2500
            found = await s.get_many(["user0", "user1234", "user2499"])
            assert [pairs(h) for h in found] == [
                [(0, "i0"), (1, "j")],
                [(1234, "i1234"), (1235, "j")],
                [(2499, "i2499"), (2500, "j")],
            ]

    run(scenario)


def test_num_users_counts_each_user_once(store):
    async def scenario():
        async with store.open() as s:
            await s.append([Event("a", "x", 1), Event("b", "x", 1), Event("a", "y", 2)])
            assert await s.num_users() == 2
            await s.append([Event("a", "z", 3), Event("c", "x", 1)])
            assert await s.num_users() == 3

    run(scenario)


def test_get_many_keeps_order_with_unknowns_mixed_in(store):
    async def scenario():
        async with store.open() as s:
            await s.append([Event("a", "ia", 1), Event("b", "ib", 2), Event("c", "ic", 3)])
            found = await s.get_many(["c", "ghost", "a", "b", "ghost2", "a"])
            assert [None if h is None else pairs(h) for h in found] == [
                [(3, "ic")],
                None,
                [(1, "ia")],
                [(2, "ib")],
                None,
                [(1, "ia")],
            ]

    run(scenario)


def test_one_append_for_many_users_matches_merge_events(store):
    """Random batches over several users, ties and late events included, against the
    reference rule after every call."""

    async def scenario():
        rng = random.Random(7)
        expected: dict[str, History] = {}
        async with store.open(max_history=6) as s:
            for step in range(40):
                events = [
                    Event(rng.choice("pqrs"), f"e{step}.{k}", rng.randrange(0, 12))
                    for k in range(rng.randrange(1, 8))
                ]
                await s.append(events)
                for user in {e.user_id for e in events}:
                    mine = [e for e in events if e.user_id == user]
                    expected[user] = merge_events(expected.get(user, History()), mine, 6)
                users = sorted(expected)
                assert [pairs(h) for h in await s.get_many(users)] == [
                    pairs(expected[u]) for u in users
                ], f"step {step}"

    run(scenario)


def test_concurrent_appends_from_two_replicas_lose_nothing(store):
    async def scenario():
        times = list(range(40))
        random.Random(3).shuffle(times)  # most appends land before events already stored
        async with store.open() as first, store.open() as second:
            clients = [first, second]
            await asyncio.gather(
                *(
                    clients[n % 2].append(
                        [Event("u", f"i{times[2 * n]}", times[2 * n]), Event("v", "x", n)]
                        + [Event("u", f"i{times[2 * n + 1]}", times[2 * n + 1])]
                    )
                    for n in range(20)
                )
            )
            assert pairs(await first.get("u")) == [(t, f"i{t}") for t in range(40)]
            assert sorted(pairs(await second.get("v"))) == [(n, "x") for n in range(20)]

    run(scenario)


def test_concurrent_appends_with_equal_times_keep_each_call_together_in_order(store):
    async def scenario():
        async with store.open() as first, store.open() as second:
            clients = [first, second]
            await asyncio.gather(
                *(
                    clients[n % 2].append([Event("u", f"{n}a", 1), Event("u", f"{n}b", 1)])
                    for n in range(20)
                )
            )
            items = (await first.get("u")).item_ids
            assert sorted(items) == sorted(f"{n}{s}" for n in range(20) for s in "ab")
            # each call's two events were appended together (atomically), in arrival order
            assert all(items[k][:-1] == items[k + 1][:-1] for k in range(0, 40, 2))
            assert all(items[k].endswith("a") for k in range(0, 40, 2))

    run(scenario)


def test_odd_item_and_user_ids_round_trip(store):
    async def scenario():
        async with store.open() as s:
            await s.append([Event("user|1 ü", item, t) for t, item in enumerate(ODD_IDS)])
            assert pairs(await s.get("user|1 ü")) == list(enumerate(ODD_IDS))
            await s.seed([("seeded:ü", History(ODD_IDS, list(range(len(ODD_IDS)))))])
            assert pairs(await s.get("seeded:ü")) == list(enumerate(ODD_IDS))
            await s.append(
                [Event("neg", "x", -5), Event("neg", "big", 2**40), Event("neg", "y", 0)]
            )
            assert pairs(await s.get("neg")) == [(-5, "x"), (0, "y"), (2**40, "big")]

    run(scenario)


def test_ratings_follow_their_events_through_appends_and_seeding(store):
    """Rated and unrated events mix; ordering moves each rating with its event, and item ids
    with ':' or ';' keep their rating apart (the Redis entry's format)."""

    async def scenario():
        async with store.open() as s:
            await s.append([Event("u", "b:;x", 20, rating=4.5), Event("u", "a", 10)])
            await s.append([Event("u", "c", 15, rating=1.0)])
            found = await s.get("u")
            assert list(zip(found.item_ids, found.ratings)) == [
                ("a", None),
                ("c", 1.0),
                ("b:;x", 4.5),
            ]
            await s.seed([("v", History(["x", "y"], [2, 1], [3.0, None]))])
            assert (await s.get("v")).ratings == [None, 3.0]  # put in time order
            await s.append([Event("w", "z", 1)])
            assert (await s.get("w")).ratings == []  # nothing rated

    run(scenario)


def test_a_new_replica_sees_earlier_writes(store):
    async def first_replica():
        async with store.open() as s:
            await s.append([Event("u", "a", 1)])
            await s.seed([("v", History(["b"], [2]))])

    async def second_replica():
        async with store.open() as s:
            assert pairs(await s.get("u")) == [(1, "a")]
            assert pairs(await s.get("v")) == [(2, "b")]
            assert await s.num_users() == 2
            await s.append([Event("u", "c", 0)])

    async def third_replica():
        async with store.open() as s:
            assert pairs(await s.get("u")) == [(0, "c"), (1, "a")]

    run(first_replica)  # each replica on its own event loop, as separate processes would be
    run(second_replica)
    run(third_replica)


def test_redis_prefixes_are_independent(redis_url):
    from recsys_dist.serving.redis_store import RedisStore

    async def scenario():
        one, two = (f"test_{uuid.uuid4().hex[:12]}" for _ in range(2))
        a, b = RedisStore(redis_url, 5, prefix=one), RedisStore(redis_url, 5, prefix=two)
        try:
            await a.append([Event("u", "x", 1), Event("v", "x", 1)])
            await b.append([Event("u", "y", 2)])
            assert await a.num_users() == 2
            assert await b.num_users() == 1
            assert pairs(await b.get("u")) == [(2, "y")]
            assert await b.get("v") is None
            keys = {key async for key in a.client.scan_iter(match=f"{one}:*")}
            assert keys == {f"{one}:users", f"{one}:h:u", f"{one}:h:v"}
        finally:
            for store in (a, b):
                await store.client.delete(store.users_key, *(store.history_key(u) for u in "uv"))
                await store.close()

    run(scenario)


def test_redis_rejects_timestamps_lua_cannot_compare_exactly(redis_url):
    from recsys_dist.serving.redis_store import RedisStore

    async def scenario():
        s = RedisStore(redis_url, 5, prefix=f"test_{uuid.uuid4().hex[:12]}")
        try:
            with pytest.raises(ValueError, match="out of range"):
                await s.append([Event("u", "x", 2**60)])
            assert await s.get("u") is None
        finally:
            await s.close()

    run(scenario)


# --- the Redis store when its server is gone, silent, or loses an answer ----------------------

CALL_BOUND_S = 10.0  # no call may take longer, whatever the server does (the budget is 5 s)


async def timed(call: Awaitable) -> tuple[str, float]:
    """``("ok" | "unavailable", seconds)``; any other error is a bug and propagates."""
    started = time.monotonic()
    try:
        await call
        return "ok", time.monotonic() - started
    except StoreUnavailable:
        return "unavailable", time.monotonic() - started


async def until(
    condition: Callable[[], bool], changed: asyncio.Event, what: str, tasks: list[asyncio.Task]
) -> None:
    """Wait for ``condition``, re-checked whenever ``changed`` is set; a minute at most, so
    a call that hangs fails the test instead of hanging it. A task that failed meanwhile
    raises its error here."""

    async def wait() -> None:
        while not condition():
            for task in tasks:
                if task.done():
                    task.result()
            changed.clear()
            await changed.wait()

    try:
        await asyncio.wait_for(wait(), 60)
    except asyncio.TimeoutError:
        pytest.fail(f"waited a minute for {what}")


def test_redis_outage_fails_fast_and_the_same_store_serves_again(redis_server):
    """The server is killed under a load of reads and appends from several callers: every
    call ends, a success or StoreUnavailable, within the bound; once a new server listens on
    the same port, the same RedisStore reads and appends again (persistence is off)."""
    from recsys_dist.serving.redis_store import RedisStore

    async def scenario():
        store = RedisStore(redis_server.url, 50, prefix=f"test_{uuid.uuid4().hex[:12]}")
        phase, done, changed = "before", False, asyncio.Event()
        outcomes: list[tuple[int, str, str, float]] = []  # caller, phase at start, kind, s

        def seen(phase_: str, kind: str) -> set[int]:
            return {n for n, p, k, _ in outcomes if (p, k) == (phase_, kind)}

        async def caller(n: int) -> None:
            k = 0
            try:
                while not done:
                    started_in = phase
                    if k % 2:
                        kind, seconds = await timed(store.get_many([f"u{n}", "nobody"]))
                    else:
                        kind, seconds = await timed(store.append([Event(f"u{n}", f"i{k}", k)]))
                    outcomes.append((n, started_in, kind, seconds))
                    changed.set()
                    k += 1
            finally:
                changed.set()  # an error, too, wakes the test, which raises it

        try:
            await store.append([Event("u", "a", 1)])
            assert pairs(await store.get("u")) == [(1, "a")]
            callers = [asyncio.create_task(caller(n)) for n in range(4)]
            await until(lambda: len(seen("before", "ok")) == 4, changed, "successes", callers)
            phase = "stopping"
            await asyncio.to_thread(redis_server.stop)  # the callers keep calling meanwhile
            phase = "outage"  # calls started from now on find no server
            await until(
                lambda: len(seen("outage", "unavailable")) == 4, changed, "failures", callers
            )
            phase = "restarting"
            await asyncio.to_thread(redis_server.start)
            phase = "after"
            await until(lambda: len(seen("after", "ok")) == 4, changed, "recovery", callers)
            done = True
            await asyncio.gather(*callers)
            assert max(seconds for *_, seconds in outcomes) < CALL_BOUND_S
            await store.append([Event("u", "b", 2)])  # data did not persist: a fresh server
            assert pairs(await store.get("u")) == [(2, "b")]
            assert await store.num_users() >= 1
        finally:
            done = True
            await store.close()

    run(scenario)


class FaultyProxy:
    """A TCP proxy in front of a redis-server that loses what crosses it as a network can:
    everything while ``partitioned`` (connections stay open, nothing arrives: a partition),
    or only the answer to the next script call (``lose_next_script_answer``), which the
    server has received and run: the connection is then reset, or stays silent."""

    def __init__(self, redis_url: str) -> None:
        self.target = urlsplit(redis_url).port
        self.partitioned = False
        self.lose: str | None = None  # "reset" or "silence", for the next script call
        self.lost = 0  # script calls whose answer was lost
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FaultyProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()

    def lose_next_script_answer(self, how: str) -> None:
        self.lose = how

    async def _serve(self, client_in, client_out) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [client_out, server_out]
        losing: list[str] = []  # how this connection loses the answer it owes, if it does

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if self.partitioned:
                    continue
                if self.lose and b"EVAL" in data:  # EVALSHA or EVAL: the append script
                    losing.append(self.lose)
                    self.lose, self.lost = None, self.lost + 1
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def downstream() -> None:
            while data := await server_in.read(65536):
                if self.partitioned or losing == ["silence"]:
                    continue
                if losing == ["reset"]:
                    client_out.transport.abort()
                    return
                client_out.write(data)
                await client_out.drain()
            client_out.close()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(upstream(), downstream())
        for writer in (client_out, server_out):
            writer.transport.abort()


@pytest.mark.parametrize("how", ["reset", "silence"])
def test_redis_append_whose_answer_is_lost_is_applied_once(redis_url, how):
    """The server runs the script, then its answer is lost (the connection reset, or a
    timeout): the append raises StoreUnavailable and is not sent again, so the events are
    stored once. A client that retried it (redis-py's retry does, for any command) would
    succeed here and store them twice."""
    from recsys_dist.serving.redis_store import RedisStore

    async def scenario():
        prefix = f"test_{uuid.uuid4().hex[:12]}"
        async with FaultyProxy(redis_url) as proxy:
            store = RedisStore(proxy.url, 50, prefix=prefix, socket_timeout=0.5)
            direct = RedisStore(redis_url, 50, prefix=prefix)
            try:
                await store.append([Event("u", "a", 1)])  # loads the script
                proxy.lose_next_script_answer(how)
                with pytest.raises(StoreUnavailable, match="append"):
                    await store.append([Event("u", "b", 2), Event("v", "c", 3)])
                assert proxy.lost == 1
                assert pairs(await direct.get("u")) == [(1, "a"), (2, "b")]  # run, once
                assert pairs(await direct.get("v")) == [(3, "c")]
                await store.append([Event("u", "d", 4)])  # the store goes on
                assert pairs(await direct.get("u")) == [(1, "a"), (2, "b"), (4, "d")]
            finally:
                await direct.client.delete(direct.users_key, direct.history_key("u"))
                await direct.client.delete(direct.history_key("v"))
                await store.close()
                await direct.close()

    run(scenario)


def test_redis_partition_ends_every_call_within_its_budget(redis_url):
    """Connections open, nothing answered: reads, appends and counts time out instead of
    waiting for ever, raise StoreUnavailable, and the store serves once the network heals."""
    from recsys_dist.serving.redis_store import RedisStore

    async def scenario():
        prefix = f"test_{uuid.uuid4().hex[:12]}"
        async with FaultyProxy(redis_url) as proxy:
            store = RedisStore(
                proxy.url, 50, prefix=prefix, connect_timeout=0.3, socket_timeout=0.3
            )
            try:
                await store.append([Event("u", "a", 1)])
                proxy.partitioned = True
                calls = [
                    store.get_many(["u"]),
                    store.append([Event("u", "b", 2)]),
                    store.num_users(),
                    store.seed([("w", History(["x"], [1]))]),
                ]
                every = asyncio.gather(*(timed(call) for call in calls))
                outcomes = await asyncio.wait_for(every, 60)  # a hang fails, not hangs, the test
                assert [kind for kind, _ in outcomes] == ["unavailable"] * 4
                assert max(seconds for _, seconds in outcomes) < store.call_timeout + 1
                proxy.partitioned = False
                assert [h.item_ids for h in await store.get_many(["u"])] == [["a"]]
            finally:
                await store.client.delete(store.users_key, store.history_key("u"))
                await store.client.delete(store.history_key("w"))
                await store.close()

    run(scenario)
