"""API keys: a keys file that never holds a secret, scopes, revocation, a rate per key."""

from __future__ import annotations

import time

import pytest

from recsys_dist.errors import UserInputError
from recsys_dist.serving.auth import KeyRing, KeysFile, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_keys_file_keeps_hashes_names_and_scopes_never_the_secret(tmp_path):
    keys = KeysFile(str(tmp_path / "keys.json"))
    secret = keys.create("web", ["recommend"])
    other = keys.create("ingest", ["events:write", "users:read"])
    assert secret.startswith("rsd_") and secret != other and len(secret) > 40
    stored = (tmp_path / "keys.json").read_text()
    assert secret not in stored and other not in stored
    assert [(k.name, k.scopes) for k in keys.keys()] == [
        ("web", ("recommend",)),
        ("ingest", ("events:write", "users:read")),
    ]
    with pytest.raises(UserInputError, match="already used"):
        keys.create("web", ["recommend"])
    with pytest.raises(UserInputError, match="admin"):
        keys.create("root", ["admin"])
    revoked = keys.revoke("web")
    assert revoked.revoked_at is not None and "sha256" not in revoked.public()
    with pytest.raises(UserInputError, match="no live key"):
        keys.revoke("web")
    assert keys.create("web", ["recommend"]) != secret  # the name is free again


def test_a_request_needs_a_live_key_with_the_scope(tmp_path):
    keys = KeysFile(str(tmp_path / "keys.json"))
    web = keys.create("web", ["recommend"])
    ring = KeyRing(keys.path, reload_s=3600)
    try:
        assert ring.check("", "recommend").status == 401
        assert ring.check(f"Basic {web}", "recommend").status == 401
        assert ring.check("Bearer rsd_guessed", "recommend").status == 401
        assert ring.check(f"Bearer {web}", "recommend").status == 0
        assert ring.check(f"bearer {web}", None).status == 0  # any live key
        forbidden = ring.check(f"Bearer {web}", "events:write")
        assert forbidden.status == 403 and "events:write" in forbidden.detail
        keys.revoke("web")
        assert ring.check(f"Bearer {web}", "recommend").status == 0  # until the next reload
        ring.reload()
        assert ring.check(f"Bearer {web}", "recommend").status == 401
    finally:
        ring.close()


def test_each_key_has_its_own_token_bucket(tmp_path):
    keys = KeysFile(str(tmp_path / "keys.json"))
    a, b = keys.create("a", ["recommend"]), keys.create("b", ["recommend"])
    ring = KeyRing(keys.path, reload_s=3600, rate=2.0, burst=3)
    try:
        statuses = [ring.check(f"Bearer {a}", "recommend") for _ in range(4)]
        assert [v.status for v in statuses] == [0, 0, 0, 429]
        assert statuses[-1].retry_after_s >= 1 and "over its rate" in statuses[-1].detail
        assert ring.check(f"Bearer {b}", "recommend").status == 0  # another key's bucket
    finally:
        ring.close()


def test_a_token_bucket_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=2.0, clock=clock)
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token comes back in 1/rate s
    clock.now += 0.5
    assert bucket.take() == 0.0
    clock.now += 10  # never more than the burst
    assert [bucket.take() for _ in range(3)][-1] > 0


def test_a_deployed_config_without_keys_is_refused_unless_it_says_insecure(tmp_path):
    """`serve deploy` goes through build_app, which cannot see the bind address: no keys file
    and no `insecure: true` is refused before anything starts (no store, no Ray call)."""
    from recsys_dist.config import ConfigError
    from recsys_dist.serving.app import build_app

    with pytest.raises(ConfigError, match="no serve.api_keys_file"):
        build_app({"run": str(tmp_path / "run"), "serve": {"store": "embedded"}})
    with pytest.raises(ConfigError, match="no serve.api_keys_file"):
        build_app({"run": str(tmp_path / "run"), "insecure": "yes"})  # only `true` counts


def test_a_missing_or_malformed_keys_file_refuses_to_start(tmp_path):
    """Zero keys would lock every client out (or, read as "no keys", let everyone in): the
    service stops with one line naming the file instead."""
    from recsys_dist.serving.auth import KeysFileError

    missing = str(tmp_path / "missing.json")
    with pytest.raises(KeysFileError, match="missing.json: no such file; create a key first"):
        KeyRing(missing, reload_s=3600)
    for name, text in [("bad.json", "{not json"), ("odd.json", '{"keys": [{"name": "x"}]}')]:
        (tmp_path / name).write_text(text)
        with pytest.raises(KeysFileError, match=f"{name}: not a keys file"):
            KeyRing(str(tmp_path / name), reload_s=3600)


def test_a_failed_reload_keeps_the_last_keys_and_is_logged_and_counted(tmp_path, caplog):
    """A file that stops reading (a bad edit, a lost mount) must be visible: every failed
    reload is logged and counted, and the keys read last stay in force meanwhile."""
    import threading

    keys = KeysFile(str(tmp_path / "keys.json"))
    web = keys.create("web", ["recommend"])
    failures = threading.Semaphore(0)
    ring = KeyRing(keys.path, reload_s=0.1, on_reload_failure=failures.release)
    try:
        (tmp_path / "keys.json").write_text("{truncated")
        with caplog.at_level("WARNING", logger="recsys_dist.serving.auth"):
            assert failures.acquire(timeout=30) and failures.acquire(timeout=30)
        assert ring.reload_failures >= 2
        assert any("could not reload the API keys" in r.message for r in caplog.records)
        assert ring.check(f"Bearer {web}", "recommend").status == 0  # the last good keys
        keys._write([])  # readable again, without the key: revoked from here on
        deadline = time.monotonic() + 30
        while ring.check(f"Bearer {web}", "recommend").status != 401:
            assert time.monotonic() < deadline, "the file read again but the key still works"
            time.sleep(0.05)  # the reload interval's poll, bounded by the deadline
    finally:
        ring.close()


def test_a_deployed_config_names_a_registry_or_a_run_and_the_registry_has_a_current(tmp_path):
    """`serve deploy` of the production topology serves a registry's current version: one
    without a current version, or args naming both or neither source, stop with one line
    before anything starts."""
    from recsys_dist.config import ConfigError
    from recsys_dist.serving.app import build_app

    for args in ({}, {"registry": str(tmp_path / "r"), "run": str(tmp_path / "run")}):
        with pytest.raises(ConfigError, match="give `registry`"):
            build_app({**args, "insecure": True})
    with pytest.raises(ConfigError, match="no current version to serve"):
        build_app({"registry": str(tmp_path / "registry"), "insecure": True})
