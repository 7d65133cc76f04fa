"""The Redis backend of the online store: every user's history in one Redis server.

All replicas (and every later deployment) share the same server, so histories survive restarts
of the whole Ray cluster; the embedded :class:`~recsys_dist.serving.store.ActorStore` does not.
Whether Redis itself keeps them across its own restarts (AOF, RDB snapshots, both or neither) is
the operator's choice, made in the server's configuration, not here.

Layout, all under ``prefix`` (the service's ``instance`` name, so services can share a server):

* ``{prefix}:h:{user_id}``: a list, the user's history oldest first, one entry per event,
  ``"<timestamp>:<item_id>"``, or ``"<timestamp>;<rating>:<item_id>"`` for a rated event. The
  timestamp is a decimal integer and the rating a decimal number (neither holds a ``:``), so the
  first ``:`` ends them and an item id may contain anything, ``:`` included.
* ``{prefix}:users``: a set of every user with a history, so :meth:`RedisStore.num_users` counts
  this service's users only, without scanning the database.

Appends run as one Lua script per call: Redis runs a script atomically, so concurrent appends
from any number of replicas never lose or misorder events, and one call is one round trip. The
script applies :func:`~recsys_dist.serving.store.merge_events`'s rule. A single server (or a
primary with replicas / Sentinel) is assumed: the script touches several users' keys, which Redis
Cluster would reject unless they shared a hash slot.

An unreachable server (a partition, a restart) never hangs a replica: connecting and every
read or write are timed out, what is safe to repeat is retried a few times with jittered
exponential back-off, each call has a budget, and what still fails raises
:class:`~recsys_dist.serving.store.StoreUnavailable` (the service answers 503). The pool
reconnects by itself once the server is back. Reads and seeding are retried whole; an append
is never sent twice (see :meth:`RedisStore._append_once`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import FullJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recsys_dist.serving.store import Event, History, StoreUnavailable, UserStore, merge_events

logger = logging.getLogger(__name__)

SEED_USERS_PER_ROUND_TRIP = 1000  # users per seed pipeline ...
SEED_ENTRIES_PER_ROUND_TRIP = 100_000  # ... or fewer, when their histories are long
MAX_TIMESTAMP = 2**53  # Lua numbers are doubles: integers beyond this would compare inexactly

# Failing fast is what turns a partition into a 503 rather than a hung replica. A healthy
# server answers in well under a millisecond, so these leave a wide margin for a busy one.
CONNECT_TIMEOUT_S = 1.0  # to open a connection
SOCKET_TIMEOUT_S = 2.0  # for any one read or write on an open connection
# Retries outlive a blip (a failover, a restart, a dropped connection) without making a dead
# server slow to report: attempts after the first, spaced by jittered exponential back-off
# from BACKOFF_BASE_S up to BACKOFF_CAP_S, so replicas do not reconnect in lock-step.
RETRIES = 3
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
# redis-py nests its retries (connecting, inside a command's attempts), so the worst case of
# timeouts times attempts is their product; one budget per call bounds it whatever happens.
CALL_TIMEOUT_S = 5.0
# A connection idle this long is PINGed before it carries a command: a silently dead one is
# found, and replaced, before anything is sent on it.
HEALTH_CHECK_INTERVAL_S = 10
# redis-py's errors for a server that cannot be reached or does not answer in time (a server
# still loading its data raises a ConnectionError too): what StoreUnavailable stands for.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")

# KEYS[1]: the users set; KEYS[1 + u]: the history list of the call's u-th user.
# ARGV[1]: max_history; then for each user in KEYS' order: user id, event count n, n entries.
# Per user: the new entries are sorted by time (ties: arrival order). Stored entries no later
# than the earliest new one stay in place (the common case: events arrive in time order, so this
# is a plain RPUSH); any later ones are taken off, merged with the new ones (ties: stored first)
# and pushed back. Then the list is cut to the most recent max_history.
_APPEND_SCRIPT = """
local max_history = tonumber(ARGV[1])

local function time_of(entry)
  return tonumber(string.match(entry, '^-?%d+'))
end

local function push(key, entries)
  for first = 1, #entries, 1000 do  -- unpack has a stack limit: bounded chunks
    redis.call('RPUSH', key, unpack(entries, first, math.min(first + 999, #entries)))
  end
end

local function earlier(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end

local arg = 2
for u = 2, #KEYS do
  local key = KEYS[u]
  local user = ARGV[arg]
  local n = tonumber(ARGV[arg + 1])
  local new = {}
  for j = 1, n do
    local entry = ARGV[arg + 1 + j]
    new[j] = {time_of(entry), j, entry}
  end
  arg = arg + 2 + n
  table.sort(new, earlier)

  local earliest = new[1][1]
  local stored = {}
  local last = redis.call('LINDEX', key, -1)
  if last and time_of(last) > earliest then
    local all = redis.call('LRANGE', key, 0, -1)
    local keep = #all
    while keep > 0 and time_of(all[keep]) > earliest do keep = keep - 1 end
    for j = keep + 1, #all do stored[#stored + 1] = all[j] end
    if keep == 0 then
      redis.call('DEL', key)
    else
      redis.call('LTRIM', key, 0, keep - 1)
    end
  end

  local merged, i, j = {}, 1, 1
  while i <= #stored or j <= n do
    if j > n or (i <= #stored and time_of(stored[i]) <= new[j][1]) then
      merged[#merged + 1] = stored[i]
      i = i + 1
    else
      merged[#merged + 1] = new[j][3]
      j = j + 1
    end
  end
  push(key, merged)
  redis.call('LTRIM', key, -max_history, -1)
  redis.call('SADD', KEYS[1], user)
end
return 0
"""


def _entry(timestamp: Any, item_id: str, rating: float | None = None) -> str:
    """One stored event. Timestamps are checked here because the script compares them as
    doubles, and a value that silently lost precision would misorder a history."""
    time = int(timestamp)
    if abs(time) > MAX_TIMESTAMP:
        raise ValueError(f"timestamp {timestamp!r} is out of range (at most 2**53 in magnitude)")
    return f"{time}:{item_id}" if rating is None else f"{time};{float(rating)!r}:{item_id}"


def _history(entries: list[str]) -> History:
    items, times, ratings = [], [], []
    for entry in entries:
        head, _, item = entry.partition(":")
        time, _, rating = head.partition(";")
        items.append(item)
        times.append(int(time))
        ratings.append(float(rating) if rating else None)
    return History(items, times, ratings)


class RedisStore(UserStore):
    """A client of the histories in one Redis server; every replica builds its own.

    The client connects lazily, on the first call, so building one is cheap and does no I/O.
    Its connections belong to the event loop that first uses them: use one ``RedisStore`` per
    event loop, and :meth:`close` it on that loop when done.

    Args:
        url: The server, e.g. ``redis://host:6379/0`` (``rediss://`` for TLS; a password in
            the URL is never logged).
        max_history: Events kept per user (the most recent); must match every other client of
            the same ``prefix``, since each append cuts to its own value.
        prefix: Namespaces every key, so several services (or tests) can share one server.
        connect_timeout: Seconds to open a connection.
        socket_timeout: Seconds for any one read or write on an open connection.
        retries: Attempts after the first, for what is safe to repeat: connecting, reads,
            seeding; never a sent append.
        call_timeout: Seconds one call may take in all, retries included; past it, or when
            the retries are spent, the call raises ``StoreUnavailable``.

    Raises:
        StoreUnavailable: From every coroutine, when the server cannot be reached in time.
    """

    def __init__(
        self,
        url: str,
        max_history: int,
        prefix: str = "recsys_dist",
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        socket_timeout: float = SOCKET_TIMEOUT_S,
        retries: int = RETRIES,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        if max_history <= 0:
            raise ValueError(f"max_history must be positive, got {max_history}")
        self.max_history = max_history
        self.prefix = prefix
        self.users_key = f"{prefix}:users"
        self.call_timeout = call_timeout
        self.client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(FullJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries),
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
        )
        self._append_sha = self.client.register_script(_APPEND_SCRIPT).sha
        where = self.client.connection_pool.connection_kwargs
        logger.info(
            "online store: Redis at %s:%s db %s, prefix %r",
            where.get("host", "?"),
            where.get("port", "?"),
            where.get("db", 0),
            prefix,
        )

    def history_key(self, user_id: str) -> str:
        """The key of one user's history list."""
        return f"{self.prefix}:h:{user_id}"

    async def get_many(self, user_ids: Sequence[str]) -> list[History | None]:
        """One round trip: the users set's membership, so a user seeded with an empty history
        reads as empty rather than unknown, and every user's list, pipelined."""
        if not user_ids:
            return []
        known, *lists = await self._bounded("read histories", self._read(user_ids))
        return [
            _history(entries) if entries or member else None
            for member, entries in zip(known, lists, strict=True)
        ]

    async def append(self, events: Sequence[Event]) -> None:
        """Add events to their users' histories in one atomic script call (one round trip,
        after the first call has loaded the script into the server)."""
        by_user: dict[str, list[str]] = {}
        for event in events:
            entry = _entry(event.timestamp, event.item_id, event.rating)
            by_user.setdefault(event.user_id, []).append(entry)
        if not by_user:
            return
        keys = [self.users_key]
        args: list[str | int] = [self.max_history]
        for user, entries in by_user.items():
            keys.append(self.history_key(user))
            args += [user, len(entries), *entries]
        await self._bounded("append events", self._append_once(keys, args))

    async def _read(self, user_ids: Sequence[str]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.smismember(self.users_key, list(user_ids))
            for user in user_ids:
                pipe.lrange(self.history_key(user), 0, -1)
            return await pipe.execute()

    async def _append_once(self, keys: list[str], args: list[str | int]) -> None:
        """Run the append script at most once.

        The client's retry policy wraps sending a command *and* reading its answer: after a
        lost answer (a timeout, a reset connection) it would send EVALSHA again, and a script
        that had run would add its events twice. So the script is sent here, on a connection
        of the pool taken for this call, outside that policy. What is retried is only taking
        a live connection (connecting, a stale one's reconnection, the health check's PING),
        which sends nothing of the append; once EVALSHA is sent, an error raises (the result
        is unknown, the caller was not acknowledged and may send again).
        """
        async with self.client.client() as single:  # entering it takes a live connection
            connection = single.connection
            try:
                await connection.send_command("EVALSHA", self._append_sha, len(keys), *keys, *args)
                await connection.read_response()
            except NoScriptError:  # not run: the server lost its script cache (a restart)
                await connection.send_command("EVAL", _APPEND_SCRIPT, len(keys), *keys, *args)
                await connection.read_response()

    async def seed(self, users: Iterable[tuple[str, History]]) -> int:
        """Replace these users' histories, in MULTI/EXEC chunks: memory stays bounded however
        many users come, and no reader sees a user between the delete and the push.

        Each history is put in time order and cut first (``merge_events`` with no events), so
        every stored list keeps the order the append script relies on.
        """
        loaded = 0
        chunk: list[tuple[str, list[str]]] = []
        chunk_entries = 0
        for user, history in users:
            ordered = merge_events(history, (), self.max_history)
            entries = [
                _entry(t, i, r)
                for i, t, r in zip(ordered.item_ids, ordered.timestamps, ordered.rating_list())
            ]
            chunk.append((user, entries))
            chunk_entries += len(entries)
            if (
                len(chunk) >= SEED_USERS_PER_ROUND_TRIP
                or chunk_entries >= SEED_ENTRIES_PER_ROUND_TRIP
            ):
                loaded += await self._bounded("seed histories", self._seed_chunk(chunk))
                chunk, chunk_entries = [], 0
        if chunk:
            loaded += await self._bounded("seed histories", self._seed_chunk(chunk))
        logger.debug("seeded %d users under prefix %r", loaded, self.prefix)
        return loaded

    async def _seed_chunk(self, chunk: list[tuple[str, list[str]]]) -> int:
        """One MULTI/EXEC, retried whole by the client: it replaces histories, so a repeat
        leaves what one run a moment later would have (no event is ever added twice)."""
        async with self.client.pipeline(transaction=True) as pipe:
            for user, entries in chunk:
                key = self.history_key(user)
                pipe.delete(key)
                if entries:
                    pipe.rpush(key, *entries)
            pipe.sadd(self.users_key, *[user for user, _ in chunk])
            await pipe.execute()
        return len(chunk)

    async def num_users(self) -> int:
        """This prefix's users only (the users set's size), whatever else the server holds."""
        return await self._bounded("count users", self.client.scard(self.users_key))

    async def _bounded(self, what: str, call: Awaitable[T]) -> T:
        """``call`` within the call budget; an unreachable or silent server, whichever way
        redis-py reports it, becomes ``StoreUnavailable`` (the service's 503)."""
        try:
            return await asyncio.wait_for(call, self.call_timeout)
        except UNAVAILABLE as error:
            raise StoreUnavailable(f"Redis could not {what}: {error}") from error
        except asyncio.TimeoutError as error:  # the budget, not redis-py's TimeoutError
            raise StoreUnavailable(
                f"Redis could not {what} within {self.call_timeout:g} s"
            ) from error

    async def close(self) -> None:
        """Close the client's connections (on the event loop that used them)."""
        close = getattr(self.client, "aclose", None) or self.client.close  # aclose: redis>=5.0.1
        await close()
