"""The embedded store starts and restarts full: the prepared users plus every event the
service logged since (even those still only in the event log's WAL), so a restarted store
actor leaves no user a cold start and loses no posted event."""

from __future__ import annotations

import asyncio
import uuid

import ray

from recsys_dist import run_layout
from recsys_dist.config import ServeConfig
from recsys_dist.data.prepared import stored_histories
from recsys_dist.serving.app import start_backends
from recsys_dist.serving.backends import make_store, seed_source, start_event_log
from recsys_dist.serving.store import Event


def test_a_restarted_store_reseeds_from_the_dataset_and_the_event_log(tiny_run, tmp_path):
    settings = ServeConfig(
        instance=f"seed_{uuid.uuid4().hex[:8]}",
        event_log_dir=str(tmp_path / "event_log"),
        wal_dir=str(tmp_path / "wal"),
        flush_seconds=3600.0,  # nothing is published unless someone flushes
    )
    run = str(tiny_run.run)
    user, items, times, _ = next(stored_histories(run_layout.prepared_dir_of(run)))
    log = start_event_log(settings, run)
    posted = [Event(user, "posted-1", times[-1] + 10), Event("newcomer", "posted-2", 50)]
    ray.get(log.append.remote(posted))  # acknowledged before the store existed: WAL only

    assert start_backends(settings, run) > 0
    store = make_store(settings, seed_source(settings, run))
    later = Event(user, "posted-3", times[-1] + 20)
    ray.get(log.append.remote([later]))  # what the service does for a POST /v1/events:
    asyncio.run(store.append([later]))  # the log first, then the store
    before = asyncio.run(store.get_many([user, "newcomer"]))
    assert before[0].item_ids == [*items, "posted-1", "posted-3"][-len(before[0]) :]
    assert before[1].item_ids == ["posted-2"]
    users = asyncio.run(store.num_users())

    ray.kill(store.actor, no_restart=False)  # Ray restarts it empty; it seeds itself
    after = asyncio.run(store.get_many([user, "newcomer"]))
    assert after == before
    assert asyncio.run(store.num_users()) == users
    store.destroy()
    ray.kill(log)
