"""The retraining loop, whole, through the real CLI and a real Serve application.

v1 (the shared trained run) is registered and served from the registry by two replicas under
a steady load, with its online store in a Redis server that requires a password, given in
the service's settings and in a retraining turn's (then no file the loop writes may hold it).
Events posted to the service land in its event log; a drift-triggered turn over that folder
waits (too little drift); more events, with items v1 never saw, arrive; the next turn takes
only the new file, trains v2 for two epochs from v1's weights (it keeps what v1 learned)
and promotes it; both replicas move to v2 at one instant, with no failed request and never
back, and v2 can recommend the new items; a file of
corrupted events (items shuffled) lands in the same folder, and the candidate trained on it
is kept out, v2 staying; a rollback restores v1; a turn with nothing new trains nothing.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.config import DataConfig, RetrainConfig, ServeConfig
from recsys_dist.data.prepared import load_manifest
from recsys_dist.registry import Registry
from recsys_dist.retrain import PREPARED_DIR
from recsys_dist.serving import app

from .test_serve import free_port, stop

pytestmark = pytest.mark.slow
THRESHOLD = RetrainConfig().drift_threshold
NEW_ITEMS = [f"new-{i}" for i in range(20)]


def wait_until(condition, seconds: float = 120.0) -> None:
    """Poll ``condition`` until it holds (the service acts on its own clock)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Load:
    """Steady requests from a thread, recording each response's status and model version.

    Paced at ``RATE`` a second: enough to catch a failed request or a step back during a
    switch, without the client, proxy and replicas taking a core from the retraining that the
    test waits on (a loop with no pause kept one of CI's two cores busy)."""

    RATE = 20.0

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
                self.stop.wait(1 / self.RATE)

    def versions(self) -> list[str | None]:
        return [version for _, version in self.answers]


class SharedLog:
    """The shared run's raw log: each user's items, each item's category, the last time."""

    def __init__(self, raw: Path) -> None:
        events = pq.read_table(raw / schema.EVENTS_DIR).sort_by(schema.TIMESTAMP)
        items = pq.read_table(raw / schema.ITEMS_DIR)
        ids, cats = items[schema.ITEM_ID].to_pylist(), items[schema.CATEGORIES].to_pylist()
        self.category = {item: names[0] for item, names in zip(ids, cats)}
        self.members: dict[str, list[str]] = {}
        for item, name in self.category.items():
            self.members.setdefault(name, []).append(item)
        self.history: dict[str, list[str]] = {}
        for user, item in zip(
            events[schema.USER_ID].to_pylist(), events[schema.ITEM_ID].to_pylist()
        ):
            self.history.setdefault(user, []).append(item)
        self.end = pc.max(events[schema.TIMESTAMP]).as_py()

    def least_used_category(self, user: str) -> str:
        used = {name: 0 for name in self.members}
        for item in self.history[user]:
            used[self.category[item]] += 1
        return min(used, key=used.get)


def drift_events(log: SharedLog, users: list[str], start: int) -> tuple[list[dict], set[str]]:
    """Ten recent events for each user: the first half switch to the category they used
    least (drift), the others replay items drawn from their whole history (no drift)."""
    rng, events, drifting = np.random.default_rng(0), [], set(users[: len(users) // 2])
    for user in users:
        pool = log.members[log.least_used_category(user)] if user in drifting else log.history[user]
        for k, item in enumerate(rng.choice(pool, size=10)):
            events.append({"user_id": user, "item_id": str(item), "timestamp": start + 60 * k})
    return events, drifting


def post(url: str, events: list[dict]) -> None:
    answer = httpx.post(f"{url}/v1/events", json={"events": events}, timeout=60)
    assert answer.status_code == 200, answer.text


def logged_rows(event_log: Path) -> int:
    files = sorted((event_log / schema.EVENTS_DIR).glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def test_the_loop_follows_drift_new_items_promotion_and_rollback(
    trained_run, tmp_path, cli_json, secured_redis, monkeypatch
):
    root, work, event_log = tmp_path / "registry", tmp_path / "work", tmp_path / "event_log"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    v1 = cli_json("models", "register", "--registry", str(root), "--run", str(trained_run.run))
    cli_json("models", "promote", "--registry", str(root), v1["version"])
    v1 = v1["version"]
    log = SharedLog(trained_run.raw)
    users = sorted(log.history)
    instance = f"t{uuid.uuid4().hex[:8]}"
    settings = ServeConfig(
        instance=instance,
        wal_dir=str(tmp_path / "wal"),
        event_log_dir=str(event_log),
        flush_rows=1,  # every acknowledged request becomes a Parquet file at once
        store="redis",
        redis_url=secured_redis.url,  # the password, written out: the hardest case
        registry_poll_s=0.2,
        registry_switch_s=3.0,  # both replicas load a version well within this, then switch
    )
    two_replicas = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    url = app.run_service(
        str(root / "versions" / v1),
        settings,
        port=free_port(),
        registry=str(root),
        deployment=two_replicas,
    )
    load = Load(url, user=users[-1])
    load.thread.start()
    turn = ["retrain", "--registry", str(root), "--events", str(event_log), "--output", str(work)]
    turn += ["--workers", "1"]
    try:
        recent, drifting = drift_events(log, users[:40], start=log.end + 3600)
        post(url, recent)
        wait_until(lambda: logged_rows(event_log) == len(recent))
        waited = cli_json(*turn, "--when-drift", "0.9")
        assert waited["candidate"] is None and waited["reason"].startswith("too little drift")
        check_drift(waited["drift"], drifting, active=set(users[:40]))

        with_new = [  # 40 other users, 5 events each on items no version has seen
            {"user_id": user, "item_id": NEW_ITEMS[(i + k) % 20], "timestamp": log.end + 7200 + k}
            for i, user in enumerate(users[40:80])
            for k in range(5)
        ]
        post(url, with_new)
        wait_until(lambda: logged_rows(event_log) == len(recent) + len(with_new))
        # Two warm epochs land within noise of v1 (CI, 2026-12-02: 0.5328 vs 0.5382 on the
        # same rows): the tolerance rule has its own unit tests; here the loop must promote.
        # Half the users with nothing new are replayed: the 80 active users and ~half the rest.
        promoted = cli_json(
            *turn,
            *("--when-drift", "0.05", "retrain.epochs=2", "retrain.tolerance=0.05"),
            *("retrain.replay=0.5", f"serve.redis_url={secured_redis.url}"),
        )
        v2 = promoted["candidate"]
        assert promoted["promoted"] and promoted["parent"] == v1, promoted
        # The shared run was prepared at max_len 20, not the default 50, and trained without
        # data.*: it and the candidate warm-started from it read 20 events, with no restart
        # (a candidate built at 50 was refused by the warm start, after a wasted retry).
        for version in (v1, v2):
            assert model_max_len(root, version) == trained_run.max_len != DataConfig().max_len
        assert all(
            line["train_restarts"] == 0
            for line in run_layout.read_metrics(Registry(str(root)).get(v2).record["source_run"])
        )
        every_row = load_manifest(str(work / PREPARED_DIR))["counts"]["train_rows"]
        share = trained_rows(root, v2) / every_row
        assert 0.45 < share < 0.8, share
        assert promoted["new_files"] >= 1 and promoted["new_items"] == len(NEW_ITEMS)
        assert promoted["drift"]["active_users"] == 80
        # The warm start kept what v1 learned (within 10 % on the same rows): two epochs from
        # random weights with a fresh warm-up are far from a 30-epoch model's figure.
        kept = promoted["candidate_metrics"]["ndcg@10"] / promoted["current_metrics"]["ndcg@10"]
        assert kept > 0.9, promoted
        wait_until(lambda: load.versions()[-20:] == [v2] * 20)
        switched_at = len(load.answers)
        ranked = httpx.post(f"{url}/v1/recommend", json={"user_id": users[100], "k": 250}).json()
        assert ranked["model_version"] == v2
        assert set(NEW_ITEMS) <= {item["item_id"] for item in ranked["items"]}

        corrupted = write_shuffled_events(log, event_log, users, start=log.end + 10_800)
        refused = cli_json(*turn, "retrain.epochs=1")
        assert refused["new_files"] == 1 and 0 < refused["events"] <= corrupted, refused
        assert not refused["promoted"] and "most-popular" in refused["reason"], refused
        assert httpx.get(f"{url}/v1/model").json()["model_version"] == v2

        assert cli_json("models", "rollback", "--registry", str(root))["current"] == v1
        wait_until(lambda: httpx.get(f"{url}/v1/model").json()["model_version"] == v1)
        nothing = cli_json(*turn)
        assert nothing["candidate"] is None and nothing["reason"].startswith("nothing new")
    finally:
        load.stop.set()
        load.thread.join()
        stop(settings)
    statuses = {status for status, _ in load.answers}
    assert statuses == {200}, statuses
    versions = load.versions()[:switched_at]
    first_v2 = versions.index(v2)
    assert set(versions[:first_v2]) == {v1} and set(versions[first_v2:]) == {v2}  # never back
    listed = cli_json("models", "list", "--registry", str(root))
    assert listed["current"] == v1
    assert [r["parent"] for r in listed["versions"]] == [None, v1, v2]  # the refused one too
    secret = secured_redis.password
    assert secret not in json.dumps([waited, promoted, refused, nothing, listed])
    tracked = list((tmp_path / "mlruns").rglob("params/*"))
    assert any(p.name == "serve.redis_url" for p in tracked), "MLflow logged no settings"
    assert_written_nowhere(secret, [tmp_path, Path(ray_logs_dir())])


def ray_logs_dir() -> str:
    import ray

    return ray._private.worker.global_worker.node.get_logs_dir_path()


def assert_written_nowhere(secret: str, folders: list[Path]) -> None:
    """Every file the loop wrote (registry versions, runs, the retraining dataset, MLflow's
    store, the event log and WAL, Ray's and Serve's logs): the planted password in none."""
    searched, holding = 0, []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                searched += 1
                if secret.encode() in path.read_bytes():
                    holding.append(str(path))
    assert searched > 100 and not holding, holding


def model_max_len(root: Path, version: str) -> int:
    """The events a registered version's model reads."""
    config = Path(Registry(str(root)).get(version).model_dir) / "config.json"
    return json.loads(config.read_text())["max_len"]


def trained_rows(root: Path, version: str) -> int:
    """The training rows a version's run took every epoch (the same in each)."""
    run = Registry(str(root)).get(version).record["source_run"]
    (rows,) = {line["train_sequences"] for line in run_layout.read_metrics(run)}
    return rows


def write_shuffled_events(log: SharedLog, event_log: Path, users: list[str], start: int) -> int:
    """Fifteen newest events for every user whose items are the log's, shuffled (a broken
    join): one more file in the service's event-log folder. Returns the number of events."""
    rng = np.random.default_rng(1)
    every_item = [item for history in log.history.values() for item in history]
    drawn = rng.permutation(every_item)[: 15 * len(users)]
    rows = [
        {"user_id": user, "item_id": str(drawn[15 * i + k]), "timestamp": start + 60 * k}
        for i, user in enumerate(users)
        for k in range(15)
    ]
    table = pa.Table.from_pylist(rows, schema=schema.EVENT_SCHEMA)
    pq.write_table(table, event_log / schema.EVENTS_DIR / "part-shuffled.parquet")
    return len(rows)


def check_drift(drift: dict, drifting: set[str], active: set[str]) -> None:
    """The turn analysed exactly the users active since v1's data, with v1's model, and the
    users who switched category drifted while those who replayed their history did not."""
    scores = pq.read_table(
        Path(drift["interests"]) / "interests.parquet", columns=["user_id", "drift"]
    )
    by_user = dict(zip(scores["user_id"].to_pylist(), scores["drift"].to_pylist()))
    assert set(by_user) == active and drift["active_users"] == len(active)
    assert sum(by_user[u] > THRESHOLD for u in drifting) >= 0.9 * len(drifting), by_user
    steady = active - drifting
    assert sum(by_user[u] <= THRESHOLD for u in steady) >= 0.7 * len(steady), by_user
    assert drift["drifted_users"] == sum(v > THRESHOLD for v in by_user.values())
    assert drift["share"] < 0.9
