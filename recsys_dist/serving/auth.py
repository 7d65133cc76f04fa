"""API keys for the online service: who may call it, for what, and how often.

A keys file (local or ``s3://``) holds one record per key: its name, the SHA-256 of its
secret, its scopes, when it was made and, once revoked, when. The secret itself is printed once
by ``recsys-dist keys create`` and stored nowhere, so the file can be read by anyone who
deploys the service without handing out access to it::

    {"keys": [{"name": "web", "sha256": "...", "scopes": ["recommend"],
               "created_at": "2026-12-02T06:30:00+00:00", "revoked_at": null}]}

A request presents ``Authorization: Bearer <secret>``; the service looks up its hash (a
constant-time comparison is not needed: the lookup is by a hash of the secret, which reveals
nothing about other keys). ``serve.api_keys_file`` turns authentication on; the service
re-reads the file every ``serve.api_keys_reload_s`` seconds, so a new or revoked key takes
effect without a restart.

Failures are loud: a keys file that is missing or malformed when the service starts stops it
with one line; one that cannot be read later is logged and counted at every failed reload
while the last good keys stay in force (a revocation does not take effect until the file
reads again, and the operator must know). Failed authentications are limited per client
address (:class:`FailedAttempts`), so keys cannot be guessed at the service's full rate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from recsys_dist import storage
from recsys_dist.config import ConfigError
from recsys_dist.errors import UserInputError

logger = logging.getLogger(__name__)

SCOPES = ("recommend", "events:write", "users:read")
SECRET_PREFIX = "rsd_"  # recognisable in a leaked-secret scan


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: everything but the hash."""
        return {
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class KeysFile:
    """The keys file: create, list, revoke (``recsys-dist keys``) and read (the service)."""

    def __init__(self, path: str) -> None:
        self.path = storage.absolute(path)

    def keys(self) -> list[ApiKey]:
        """Every key; none for a file not created yet (``keys create`` starts one)."""
        return self.read() if storage.is_file(self.path) else []

    def read(self) -> list[ApiKey]:
        """Every key of a file that must exist and be well formed (what the service reads).

        Raises:
            KeysFileError: naming the file and what is wrong with it.
        """
        if not storage.is_file(self.path):
            raise KeysFileError(
                f"serve.api_keys_file {self.path}: no such file; create a key first "
                f"(recsys-dist keys create --file {self.path} --name NAME --scopes ...)"
            )
        try:
            records = storage.read_json(self.path)["keys"]
            return [_key_of(record) for record in records]
        except (ValueError, KeyError, TypeError) as error:
            raise KeysFileError(
                f"serve.api_keys_file {self.path}: not a keys file ({type(error).__name__}: "
                f"{error}); recreate it with recsys-dist keys create"
            ) from None

    def create(self, name: str, scopes: list[str]) -> str:
        """Add a key; returns its secret, which is not stored anywhere."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if not scopes or unknown:
            raise UserInputError(
                f"--scopes: unknown {unknown or 'none given'}; choose from {', '.join(SCOPES)}"
            )
        keys = self.keys()
        if not name or any(k.name == name and k.revoked_at is None for k in keys):
            raise UserInputError(f"--name {name!r}: empty or already used by a live key")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        self._write([*keys, ApiKey(name, hash_secret(secret), tuple(scopes), _now())])
        return secret

    def revoke(self, name: str) -> ApiKey:
        keys = self.keys()
        live = [k for k in keys if k.name == name and k.revoked_at is None]
        if not live:
            raise UserInputError(f"{self.path}: no live key named {name!r} (see `keys list`)")
        revoked = replace(live[0], revoked_at=_now())
        self._write([revoked if k is live[0] else k for k in keys])
        return revoked

    def _write(self, keys: list[ApiKey]) -> None:
        records = [{**asdict(k), "scopes": list(k.scopes)} for k in keys]
        storage.write_json_atomic(self.path, {"keys": records})


class KeysFileError(ConfigError):
    """A keys file that is missing or cannot be read as one."""


def _key_of(record: Any) -> ApiKey:
    """One record of the file, checked: a key without a hash or with unknown scopes would
    otherwise fail only when a request presents it."""
    if not isinstance(record, dict):
        raise TypeError(f"a key record must be an object, got {record!r:.60}")
    key = ApiKey(**{**record, "scopes": tuple(record["scopes"])})
    unknown = sorted(set(key.scopes) - set(SCOPES))
    if unknown or len(key.sha256) != 64:
        raise ValueError(f"key {key.name!r}: unknown scopes {unknown} or a malformed hash")
    return key


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class TokenBucket:
    """``rate`` requests a second on average, bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.burst, self.clock()

    def wait_s(self) -> float:
        """Seconds until a token is free (0.0: one is), taking none."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is free."""
        wait = self.wait_s()
        if not wait:
            self.tokens -= 1
        return wait


@dataclass(frozen=True)
class Verdict:
    """What the service answers a request's credentials: ``status`` 0 lets it through, as
    ``key`` (whose scopes a handler may check further)."""

    status: int = 0
    detail: str = ""
    retry_after_s: int = 0
    key: ApiKey | None = None


# Failed authentications one client address may make: a burst, then one a second. Enough for
# a person who mistyped a key, far too few to guess one (a secret holds 256 random bits).
FAILURES_PER_S = 1.0
FAILURE_BURST = 20
TRACKED_ADDRESSES = 10_000  # the least recently failing are forgotten beyond this


class FailedAttempts:
    """A token bucket per client address that only failed authentications take from. While an
    address's bucket is empty, every request from it is refused (429) before its key is
    checked: otherwise a right guess would still get through at the service's full rate."""

    def __init__(self, rate: float = FAILURES_PER_S, burst: float = FAILURE_BURST) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def wait_s(self, address: str) -> float:
        """Seconds until ``address`` may try again (0.0: it may now)."""
        bucket = self._buckets.get(address)
        return bucket.wait_s() if bucket is not None else 0.0

    def failed(self, address: str) -> None:
        bucket = self._buckets.pop(address, None) or TokenBucket(self.rate, self.burst)
        self._buckets[address] = bucket  # most recent last
        bucket.take()
        while len(self._buckets) > TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)


class KeyRing:
    """The service's view of a keys file: live keys by hash, reloaded in the background, with
    a token bucket per key (``rate`` 0: no limit). One per replica: a limit of R requests a
    second holds per replica.

    Built from a file that must exist and parse (:class:`KeysFileError` otherwise). A later
    reload that fails keeps the last good keys, logs a warning and calls
    ``on_reload_failure`` (the service counts it in a metric) at every failed attempt.
    """

    def __init__(
        self,
        path: str,
        reload_s: float,
        rate: float = 0.0,
        burst: float = 0.0,
        on_reload_failure: Callable[[], None] = lambda: None,
    ):
        self.file = KeysFile(path)
        self.rate, self.burst = rate, max(burst, 1.0)
        self.failures = FailedAttempts()
        self.reload_failures = 0
        self._on_reload_failure = on_reload_failure
        self._live: dict[str, ApiKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.reload()
        self._stop = threading.Event()
        threading.Thread(target=self._follow, args=(reload_s,), daemon=True).start()

    def reload(self) -> None:
        self._live = {k.sha256: k for k in self.file.read() if k.revoked_at is None}

    def _follow(self, every_s: float) -> None:
        failing = False
        while not self._stop.wait(every_s):
            try:
                self.reload()
            except Exception as error:  # noqa: BLE001 — keep the last good keys; say so
                self.reload_failures += 1
                self._on_reload_failure()
                logger.warning(
                    "could not reload the API keys (%s); still using the %d keys read last: "
                    "a key revoked since works until the file reads again",
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                    len(self._live),
                )
                failing = True
                continue
            if failing:
                logger.warning("the API keys file %s reads again", self.file.path)
                failing = False

    def close(self) -> None:
        self._stop.set()

    def check(self, authorization: str | None, scope: str | None, client: str = "") -> Verdict:
        """429 while ``client``'s failed attempts are over their limit; 401 without a live
        key (counted against ``client``), 403 without ``scope`` (None: any live key will do),
        429 over the key's rate."""
        wait = self.failures.wait_s(client)
        if wait:
            detail = "too many failed authentications from this address"
            return Verdict(429, detail, math.ceil(wait))
        scheme, _, secret = (authorization or "").partition(" ")
        key = self._live.get(hash_secret(secret.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            self.failures.failed(client)
            return Verdict(401, "a valid API key is required (Authorization: Bearer <key>)")
        if scope is not None and scope not in key.scopes:
            return Verdict(403, f"key {key.name!r} lacks the scope {scope!r}")
        if self.rate > 0:
            bucket = self._buckets.setdefault(key.sha256, TokenBucket(self.rate, self.burst))
            wait = bucket.take()
            if wait:
                return Verdict(429, f"key {key.name!r} is over its rate", math.ceil(wait))
        return Verdict(key=key)
