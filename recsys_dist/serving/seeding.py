"""Where the online store's histories come from when it starts empty: the prepared dataset,
then every event the service logged since that the dataset has not taken.

The embedded store is one actor's memory. When it is (re)created empty (the first
deployment, a restart of the actor or of the whole cluster), it is filled from the same
sources training reads, so users keep their histories, including the events they posted
online: those are in the event log (Parquet, and its write-ahead log, which is flushed to
Parquet first). Event-log files a ``prepare --append`` has already taken are skipped: the
dataset holds their events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.data.prepared import load_manifest, stored_histories
from recsys_dist.serving.detached import NAMESPACE
from recsys_dist.serving.store import Event, History

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SeedSource:
    """The prepared dataset a service's run was trained on, and the service's event log."""

    prepared_dir: str
    event_log_dir: str
    event_log_actor: str  # its name, to flush the WAL before the Parquet files are read

    def histories(self) -> Iterator[tuple[str, History]]:
        """Every user of the prepared dataset, one bucket file at a time."""
        for user, items, times, ratings in stored_histories(self.prepared_dir):
            yield user, History(items, times, ratings)

    def logged_events(self) -> Iterator[list[Event]]:
        """The events of each event-log file the dataset has not taken, in arrival order
        (file names start with the time their segment was opened)."""
        self._flush_event_log()
        folder = storage.join(self.event_log_dir, schema.EVENTS_DIR)
        if not storage.is_dir(folder):
            return
        taken = {storage.absolute(p) for p in load_manifest(self.prepared_dir)["input_files"]}
        for path in sorted(storage.list_files(folder, ".parquet")):
            if storage.absolute(path) in taken:
                continue
            with storage.open_input(path) as handle:
                rows = pq.read_table(handle, columns=[*_EVENT_COLUMNS]).to_pylist()
            yield [Event(**row) for row in rows]

    def _flush_event_log(self) -> None:
        """Publish what the log holds in its WAL, so the Parquet files hold every event it
        acknowledged; a log that is not running has nothing unpublished to add."""
        try:
            log = ray.get_actor(self.event_log_actor, namespace=NAMESPACE)
        except ValueError:
            return
        try:
            ray.get(log.flush.remote(), timeout=FLUSH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 — seed from what is published; say what may be missing
            logger.warning(
                "could not flush the event log %s: events still in its WAL are not in the "
                "store until they are published",
                self.event_log_actor,
                exc_info=True,
            )


_EVENT_COLUMNS = (
    schema.USER_ID,
    schema.ITEM_ID,
    schema.TIMESTAMP,
    schema.EVENT_TYPE,
    schema.RATING,
)
