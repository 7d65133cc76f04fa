"""A redeploy with other settings never silently reuses the service's detached actors: the
deploy retires the old event log (publishing every event it acknowledged) and the old store,
and starts them anew, with a warning; a replica refuses one built otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import ray

from recsys_dist import schema
from recsys_dist.config import ServeConfig
from recsys_dist.data.prepared import stored_histories
from recsys_dist.serving.app import start_backends
from recsys_dist.serving.backends import make_store, seed_source, start_event_log
from recsys_dist.serving.detached import SettingsMismatch
from recsys_dist.serving.event_log import FILE_MODE
from recsys_dist.serving.store import Event


@pytest.fixture
def settings(tmp_path, ray_session):
    made = ServeConfig(
        instance=f"detached_{uuid.uuid4().hex[:8]}",
        event_log_dir=str(tmp_path / "event_log"),
        wal_dir=str(tmp_path / "wal"),
        flush_seconds=3600.0,  # nothing is published unless someone flushes or retires
    )
    yield made
    for name in (f"{made.instance}_event_log", f"{made.instance}_user_store"):
        try:
            ray.kill(ray.get_actor(name, namespace="recsys_dist"), no_restart=True)
        except ValueError:
            pass


def test_a_deploy_with_another_wal_replaces_the_log_and_publishes_its_events(
    settings, tiny_run, tmp_path, caplog
):
    run = str(tiny_run.run)
    old = start_event_log(settings, run)
    acknowledged = [Event("u1", f"i{n}", 100 + n) for n in range(5)]
    ray.get(old.append.remote(acknowledged))  # in the old WAL only (nothing flushes)

    moved = replace(settings, wal_dir=str(tmp_path / "wal-2"), event_log_ack="published")
    with caplog.at_level(logging.WARNING, logger="recsys_dist.serving.detached"):
        new = start_event_log(moved, run, replace=True)
    assert any("wal_dir" in r.message and "publish_before_ack" in r.message for r in caplog.records)
    settings_now = ray.get(new.settings.remote())
    assert settings_now["wal_dir"].startswith(str(tmp_path / "wal-2"))
    assert settings_now["publish_before_ack"] is True
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(old.stats.remote())  # the old log is gone ...
    events = pq.read_table(os.path.join(settings.event_log_dir, schema.EVENTS_DIR)).to_pylist()
    assert sorted(row[schema.ITEM_ID] for row in events) == sorted(e.item_id for e in acknowledged)
    # ... having published what it acknowledged, readable by the service's user alone
    for path in os.scandir(os.path.join(settings.event_log_dir, schema.EVENTS_DIR)):
        assert path.stat().st_mode & 0o777 == FILE_MODE

    with pytest.raises(SettingsMismatch, match="flush_rows: 10000 -> 7"):
        start_event_log(replace(moved, flush_rows=7), run)  # a replica: refused, not reused
    assert ray.get(new.settings.remote()) == settings_now  # and the running one untouched


def test_a_retired_log_refuses_appends(settings, tiny_run):
    log = start_event_log(settings, str(tiny_run.run))
    ray.get(log.retire.remote())
    with pytest.raises(ray.exceptions.RayTaskError, match="retired"):
        ray.get(log.append.remote([Event("u", "i", 1)]))


def test_a_deploy_with_another_history_length_replaces_the_store_and_seeds_it(
    settings, tiny_run
):
    run = str(tiny_run.run)
    assert start_backends(settings, run) > 0
    store = make_store(settings, seed_source(settings, run))
    ray.get(start_event_log(settings, run).append.remote([Event("late", "i9", 5)]))
    asyncio.run(store.append([Event("late", "i9", 5)]))
    users = asyncio.run(store.num_users())

    shorter = replace(settings, max_history=3)
    assert start_backends(shorter, run) == users - 1  # the prepared users, seeded again ...
    replaced = make_store(shorter, seed_source(shorter, run))
    assert asyncio.run(replaced.get("late")).item_ids == ["i9"]  # ... with the logged events
    user, items, _, _ = next(stored_histories(str(tiny_run.prepared)))
    assert asyncio.run(replaced.get(user)).item_ids == list(items)[-3:]  # cut to the new length
    with pytest.raises(SettingsMismatch, match="max_history"):
        make_store(settings, seed_source(settings, run))
