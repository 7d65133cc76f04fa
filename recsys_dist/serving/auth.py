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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from recsys_dist import storage
from recsys_dist.errors import UserInputError

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
        if not storage.is_file(self.path):
            return []
        records = storage.read_json(self.path).get("keys", [])
        return [ApiKey(**{**r, "scopes": tuple(r["scopes"])}) for r in records]

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

    def take(self) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is free."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class Verdict:
    """What the service answers a request's credentials: ``status`` 0 lets it through."""

    status: int = 0
    detail: str = ""
    retry_after_s: int = 0


class KeyRing:
    """The service's view of a keys file: live keys by hash, reloaded in the background, with
    a token bucket per key (``rate`` 0: no limit). One per replica: a limit of R requests a
    second holds per replica."""

    def __init__(self, path: str, reload_s: float, rate: float = 0.0, burst: float = 0.0):
        self.file = KeysFile(path)
        self.rate, self.burst = rate, max(burst, 1.0)
        self._live: dict[str, ApiKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.reload()
        self._stop = threading.Event()
        threading.Thread(target=self._follow, args=(reload_s,), daemon=True).start()

    def reload(self) -> None:
        self._live = {k.sha256: k for k in self.file.keys() if k.revoked_at is None}

    def _follow(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.reload()
            except Exception:  # noqa: BLE001 — keep the keys we have; try again
                pass

    def close(self) -> None:
        self._stop.set()

    def check(self, authorization: str | None, scope: str | None) -> Verdict:
        """401 without a live key, 403 without ``scope`` (None: any live key will do), 429
        over the key's rate."""
        scheme, _, secret = (authorization or "").partition(" ")
        key = self._live.get(hash_secret(secret.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            return Verdict(401, "a valid API key is required (Authorization: Bearer <key>)")
        if scope is not None and scope not in key.scopes:
            return Verdict(403, f"key {key.name!r} lacks the scope {scope!r}")
        if self.rate > 0:
            bucket = self._buckets.setdefault(key.sha256, TokenBucket(self.rate, self.burst))
            wait = bucket.take()
            if wait:
                return Verdict(429, f"key {key.name!r} is over its rate", math.ceil(wait))
        return Verdict()
