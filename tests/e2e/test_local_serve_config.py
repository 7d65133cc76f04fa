"""`serve run serve/local.yaml` runs as written: Ray Serve's own CLI, the shipped config, the
demo's relative paths, a fresh local Ray, real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"  # as serve/local.yaml says


def test_serve_run_local_yaml_serves_the_demo_run(trained_run, tmp_path):
    """The shared run stands in for the demo's: the config's paths are relative to the
    directory `serve run` starts in, where runs/demo/run is the run."""
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "run").symlink_to(trained_run.run)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        service = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", str(REPO / "serve/local.yaml")],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ADDRESS": "local"},  # its own Ray, not the session's
            start_new_session=True,
        )
    try:
        wait_until_healthy(service, log)
        user = first_user(trained_run.raw)
        answer = httpx.post(f"{URL}/v1/recommend", json={"user_id": user, "k": 3}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 3 and not answer.json()["fallback"]
        event = {"user_id": user, "item_id": answer.json()["items"][0]["item_id"], "timestamp": 1}
        posted = httpx.post(f"{URL}/v1/events", json={"events": [event]}, timeout=30)
        assert posted.status_code == 200 and posted.json()["accepted"] == 1
        assert any((tmp_path / "runs" / "demo" / "wal").rglob("*")), "WAL not where it says"
    finally:
        os.killpg(service.pid, signal.SIGINT)  # serve run shuts the app and its Ray down
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()


def wait_until_healthy(service: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert service.poll() is None, (
            f"serve run exited {service.returncode}:\n{log.read_text()[-3000:]}"
        )
        try:
            if httpx.get(f"{URL}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no answer from {URL}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)  # between polls, not instead of one


def first_user(raw: Path) -> str:
    events = pq.read_table(sorted((raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    return events.column(schema.USER_ID)[0].as_py()
