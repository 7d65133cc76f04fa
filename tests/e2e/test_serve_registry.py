"""Serving a registry: the live service follows a promotion under load, with no failed
request, and its responses move from the old version to the new one and never back."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import ray
from ray import serve

from recsys_dist.config import ServeConfig
from recsys_dist.registry import Registry
from recsys_dist.serving import app

from .test_serve import free_port

pytestmark = pytest.mark.slow


def wait_until(condition, seconds: float = 60.0) -> None:
    """Poll ``condition`` until it holds (the service acts on its own clock)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Load:
    """Steady requests from a thread, recording each response's status and model version."""

    def __init__(self, url: str, user: str) -> None:
        self.url, self.user = url, user
        self.answers: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                response = client.post(f"{self.url}/v1/recommend", json={"user_id": self.user})
                version = response.json().get("model_version") if response.is_success else None
                self.answers.append((response.status_code, version))

    def versions(self) -> list[str | None]:
        return [version for _, version in self.answers]


def test_a_promotion_reaches_the_live_service_without_a_failed_request(trained_run, tmp_path):
    registry = Registry(tmp_path / "registry")
    old, new = registry.register(trained_run.run), registry.register(trained_run.run)
    registry.promote(old.id)
    instance = f"t{uuid.uuid4().hex[:8]}"
    settings = ServeConfig(
        instance=instance,
        wal_dir=str(tmp_path / "wal"),
        flush_seconds=3600.0,
        registry_poll_s=0.2,
    )
    url = app.run_service(old.path, settings, port=free_port(), registry=registry.root)
    load = Load(url, user="u1")
    load.thread.start()
    try:
        wait_until(lambda: load.versions().count(old.id) >= 20)
        registry.promote(new.id)
        wait_until(lambda: load.versions()[-20:] == [new.id] * 20)
        assert httpx.get(f"{url}/v1/model").json()["model_version"] == new.id
        rolled_back_at = len(load.answers)
        registry.rollback()  # an explicit rollback moves it back, as promptly
        wait_until(lambda: httpx.get(f"{url}/v1/model").json()["model_version"] == old.id)
    finally:
        load.stop.set()
        load.thread.join()
        serve.shutdown()
        for name in (f"{instance}_event_log", f"{instance}_user_store"):
            ray.kill(ray.get_actor(name, namespace="recsys_dist"))
    statuses = {status for status, _ in load.answers}
    assert statuses == {200}, statuses
    versions = load.versions()
    switched = versions.index(new.id)
    assert set(versions[:switched]) == {old.id}
    assert set(versions[switched:rolled_back_at]) == {new.id}  # never back, until rolled back
