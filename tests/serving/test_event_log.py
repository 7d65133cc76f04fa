"""event_log: acknowledged events reach Parquet exactly once, through crashes and torn writes."""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import time
import uuid
import zlib
from collections import Counter

import pyarrow.parquet as pq
import pytest
import ray

from recsys_dist import schema, storage
from recsys_dist.data.events import event_files
from recsys_dist.serving import event_log
from recsys_dist.serving.detached import NAMESPACE
from recsys_dist.serving.event_log import EventLog, encode_record, event_log_actor, read_segment
from recsys_dist.serving.store import Event

HOUR = 3600.0  # flush_seconds that never fires within a test


def make_events(user: str, count: int, start: int = 0) -> list[Event]:
    """Events with every optional-column shape: both null, a type only, both set."""
    kinds = [(None, None), ("click", None), ("rate", 4.5), (None, 1.0)]
    return [
        Event(user, f"item-{start + i}", 1_700_000_000 + start + i, *kinds[(start + i) % 4])
        for i in range(count)
    ]


def as_rows(events: list[Event]) -> Counter:
    return Counter((e.user_id, e.item_id, e.timestamp, e.event_type, e.rating) for e in events)


def read_log(log_dir: str) -> dict[str, list[tuple]]:
    """Every file ``prepare`` would read under ``log_dir``, with its rows; checks the schema."""
    try:
        files = event_files(log_dir)
    except FileNotFoundError:  # no file yet (on S3 the directory may exist without one)
        return {}
    contents = {}
    for path in files:
        with storage.open_input(path) as stream:
            table = pq.read_table(stream)
        assert table.schema.equals(schema.EVENT_SCHEMA), (path, table.schema)
        contents[path] = [tuple(row.values()) for row in table.to_pylist()]
    return contents


def all_rows(contents: dict[str, list[tuple]]) -> Counter:
    return Counter(row for rows in contents.values() for row in rows)


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll ``condition`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # the poll interval, bounded by the deadline


@pytest.fixture
def start_log(ray_session):
    """Starts event-log actors under unique names and kills them all at the end of the test.

    ``start(log_dir, wal_dir, ...)`` goes through :func:`event_log_actor` (WAL in
    ``wal_dir/<name>``); with ``exact_wal=True`` the actor uses ``wal_dir`` itself, to start a
    fresh actor on a WAL another one left behind.
    """
    names = []

    def start(log_dir, wal_dir, flush_rows=1000, flush_seconds=HOUR, exact_wal=False, **more):
        name = f"test_event_log_{uuid.uuid4().hex[:8]}"
        names.append(name)
        if not exact_wal:
            args = (str(log_dir), str(wal_dir), flush_rows, flush_seconds, name)
            return event_log_actor(*args, **more)
        options = {"name": name, "namespace": NAMESPACE, "num_cpus": 0}
        actor = ray.remote(EventLog).options(**options)
        return actor.remote(str(log_dir), str(wal_dir), flush_rows, flush_seconds)

    yield start
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            pass  # already gone


def wal_files(wal_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(str(wal_dir), "**", "*.wal"), recursive=True))


def test_appended_batches_become_canonical_parquet(start_log, tmp_path):
    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    log = start_log(log_dir, wal_dir)
    batches = [make_events("a", 3), make_events("b", 1), make_events("c", 5, start=3)]
    pending = [ray.get(log.append.remote(batch)) for batch in batches]
    assert pending == [3, 4, 9]
    assert ray.get(log.append.remote([])) == 9
    assert read_log(log_dir) == {}  # nothing published before a flush or a threshold
    written = ray.get(log.flush.remote())
    contents = read_log(log_dir)
    assert sorted(written) == sorted(contents) == event_files(log_dir)
    assert len(written) == 1
    assert all(os.path.basename(p).startswith("part-") for p in written)
    assert all_rows(contents) == as_rows([e for batch in batches for e in batch])
    assert wal_files(wal_dir) == []  # a published segment is deleted
    stats = ray.get(log.stats.remote())
    assert (stats["appended"], stats["pending"], stats["files_written"]) == (9, 0, 1)
    assert ray.get(log.flush.remote()) == []  # nothing new: no empty file


def test_concurrent_appends_are_each_written_once(start_log, tmp_path):
    log_dir = str(tmp_path / "log")
    log = start_log(log_dir, tmp_path / "wal", flush_rows=7)
    batches = [make_events(f"u{i}", 1 + i % 3, start=i) for i in range(40)]
    acknowledged = ray.get([log.append.remote(batch) for batch in batches])  # all in flight
    assert all(count >= 1 for count in acknowledged)
    ray.get(log.flush.remote())
    assert all_rows(read_log(log_dir)) == as_rows([e for batch in batches for e in batch])


def test_full_segments_are_published_without_a_flush(start_log, tmp_path):
    log_dir = str(tmp_path / "log")
    log = start_log(log_dir, tmp_path / "wal", flush_rows=5)
    events = make_events("a", 12)
    for event in events:
        ray.get(log.append.remote([event]))
    contents = wait_for(lambda: len(read_log(log_dir)) >= 2 and read_log(log_dir), "2 files")
    assert sorted(len(rows) for rows in contents.values()) == [5, 5]
    ray.get(log.flush.remote())
    contents = read_log(log_dir)
    assert sorted(len(rows) for rows in contents.values()) == [2, 5, 5]
    assert all_rows(contents) == as_rows(events)
    # Files sort in arrival order, so prepare's tie-break by file order keeps the log order.
    in_file_order = [row[1] for path in sorted(contents) for row in contents[path]]
    assert in_file_order == [e.item_id for e in events]


def test_an_append_call_is_never_split_across_files(start_log, tmp_path):
    log_dir = str(tmp_path / "log")
    log = start_log(log_dir, tmp_path / "wal", flush_rows=5)
    calls = [make_events(f"call{i}", 3, start=3 * i) for i in range(5)]
    for call in calls:
        ray.get(log.append.remote(call))
    ray.get(log.flush.remote())
    contents = read_log(log_dir)
    assert sorted(len(rows) for rows in contents.values()) == [3, 6, 6]  # sealed at >= 5
    for call in calls:
        holding = [p for p, rows in contents.items() if any(r[0] == call[0].user_id for r in rows)]
        assert len(holding) == 1, (call[0].user_id, holding)


def test_old_segments_are_published_after_flush_seconds(start_log, tmp_path):
    log_dir = str(tmp_path / "log")
    log = start_log(log_dir, tmp_path / "wal", flush_rows=1000, flush_seconds=0.3)
    events = make_events("a", 2)
    ray.get(log.append.remote(events))
    contents = wait_for(lambda: read_log(log_dir), "the age-triggered file")
    assert all_rows(contents) == as_rows(events)


def test_a_crash_after_acknowledging_loses_nothing(start_log, tmp_path):
    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    log = start_log(log_dir, wal_dir, flush_rows=1000)
    name = ray.get(log.stats.remote())["wal_dir"].rsplit(os.sep, 1)[-1]
    acknowledged = [make_events("a", 4), make_events("b", 2), make_events("a", 3, start=4)]
    for batch in acknowledged:
        ray.get(log.append.remote(batch))
    stats = ray.get(log.stats.remote())
    assert (stats["pending"], stats["files_written"]) == (9, 0)
    assert len(wal_files(wal_dir)) == 1 and read_log(log_dir) == {}

    ray.kill(log, no_restart=False)  # a crash: Ray restarts the actor under the same name

    def restarted():
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
            stats = ray.get(actor.stats.remote(), timeout=10)
        except (ray.exceptions.RayError, ValueError):
            return None  # not back yet
        return (actor, stats) if stats["segments_recovered"] else None

    actor, stats = wait_for(restarted, "the restarted event log")
    assert (stats["segments_recovered"], stats["appended"], stats["torn_records"]) == (1, 0, 0)
    assert wal_files(wal_dir) == []
    later = make_events("c", 2)
    ray.get(actor.append.remote(later))  # the restarted log keeps serving
    ray.get(actor.flush.remote())
    expected = as_rows([e for batch in acknowledged for e in batch] + later)
    assert all_rows(read_log(log_dir)) == expected


def test_redoing_a_published_segment_rewrites_the_same_file(start_log, tmp_path):
    """A crash between writing the Parquet file and deleting the segment: no duplicates."""
    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    log = start_log(log_dir, wal_dir)
    events = make_events("a", 6)
    ray.get(log.append.remote(events))
    [segment] = wal_files(wal_dir)
    shutil.copy(segment, tmp_path / "segment.copy")
    [written] = ray.get(log.flush.remote())
    ray.kill(log)
    shutil.copy(tmp_path / "segment.copy", segment)  # as if the delete never happened
    fresh = start_log(log_dir, os.path.dirname(segment), exact_wal=True)
    stats = ray.get(fresh.stats.remote())
    assert (stats["segments_recovered"], stats["files_written"]) == (1, 1)
    contents = read_log(log_dir)
    assert list(contents) == [written]
    assert all_rows(contents) == as_rows(events)


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda record: record[:-3], id="record-cut-short"),
        pytest.param(lambda record: record[:5], id="header-cut-short"),
        pytest.param(lambda record: record[:8] + b"\x00" * (len(record) - 8), id="zeroed"),
        pytest.param(lambda record: b"\xde\xad\xbe\xef garbage", id="garbage"),
    ],
)
def test_a_torn_last_record_is_dropped_and_counted(start_log, tmp_path, tail):
    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    log = start_log(log_dir, wal_dir)
    complete = [make_events("a", 3), make_events("b", 2)]
    for batch in complete:
        ray.get(log.append.remote(batch))
    ray.kill(log)
    [segment] = wal_files(wal_dir)
    with open(segment, "ab") as stream:  # a crash in the middle of writing a third record
        stream.write(tail(encode_record(make_events("never-acknowledged", 4))))
    fresh = start_log(log_dir, os.path.dirname(segment), exact_wal=True)
    stats = ray.get(fresh.stats.remote())
    assert (stats["segments_recovered"], stats["torn_records"]) == (1, 1)
    assert all_rows(read_log(log_dir)) == as_rows([e for batch in complete for e in batch])
    assert wal_files(wal_dir) == []


def raw_record(rows: list[list]) -> bytes:
    """A WAL record as the format allows, bypassing the checks ``append`` makes."""
    payload = json.dumps(rows).encode()
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_an_event_that_does_not_fit_the_schema_is_refused_before_the_wal():
    with pytest.raises(ValueError, match="int64"):
        encode_record([Event("a", "x", 10**30)])


def test_a_segment_that_cannot_become_parquet_is_quarantined_not_blocking(start_log, tmp_path):
    """A segment written before the checks existed (or by a bug), with a timestamp no int64
    holds: moved aside and counted, and the segments after it are still published."""
    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    log = start_log(log_dir, wal_dir)
    before = make_events("a", 2)
    ray.get(log.append.remote(before))
    ray.kill(log)
    [good] = wal_files(wal_dir)
    poison = os.path.join(os.path.dirname(good), "00000000000000000001-bad.wal")
    with open(poison, "wb") as stream:  # the oldest segment: it would block every other
        stream.write(event_log.WAL_MAGIC + raw_record([["u", "i", 10**30, None, None]]))
    fresh = start_log(log_dir, os.path.dirname(good), exact_wal=True)
    after = make_events("b", 3)
    ray.get(fresh.append.remote(after))
    ray.get(fresh.flush.remote())
    stats = ray.get(fresh.stats.remote())
    assert (stats["segments_quarantined"], stats["segments_recovered"]) == (1, 1)
    assert all_rows(read_log(log_dir)) == as_rows(before + after)
    quarantined = os.path.join(
        os.path.dirname(good), event_log.QUARANTINE_DIR, "00000000000000000001-bad.wal"
    )
    assert os.path.exists(quarantined) and not os.path.exists(poison)


def test_every_truncation_of_a_segment_keeps_exactly_the_complete_records(tmp_path):
    records = [make_events("a", 2), make_events("b", 1, start=2), make_events("c", 3, start=3)]
    encoded = [encode_record(batch) for batch in records]
    data = event_log.WAL_MAGIC + b"".join(encoded)
    ends = [len(event_log.WAL_MAGIC)]
    for record in encoded:
        ends.append(ends[-1] + len(record))
    path = tmp_path / "cut.wal"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        table, torn = read_segment(str(path))
        complete = sum(end <= cut for end in ends[1:])
        expected = [e for batch in records[:complete] for e in batch]
        rows = Counter(tuple(row.values()) for row in table.to_pylist())
        assert rows == as_rows(expected), cut
        assert torn == int(cut not in ends and cut > ends[0]), cut
        assert table.schema.equals(schema.EVENT_SCHEMA)
    path.write_bytes(b"PAR1 not a segment")
    with pytest.raises(ValueError, match="not an event-log WAL segment"):
        read_segment(str(path))


def test_the_log_directory_may_be_on_s3(start_log, tmp_path, s3_prefix):
    wal_dir = tmp_path / "wal"
    log = start_log(s3_prefix, wal_dir, flush_rows=4)
    batches = [make_events("a", 3), make_events("b", 3), make_events("c", 1)]
    for batch in batches:
        ray.get(log.append.remote(batch))
    first = wait_for(lambda: read_log(s3_prefix), "the full segment on S3")
    assert all_rows(first) == as_rows(batches[0] + batches[1])
    [written] = ray.get(log.flush.remote())
    assert written.startswith(f"{s3_prefix}/{schema.EVENTS_DIR}/part-")
    contents = read_log(s3_prefix)
    assert sorted(contents) == sorted([*first, written]) == event_files(s3_prefix)
    assert all_rows({written: contents[written]}) == as_rows(batches[2])
    assert all_rows(contents) == as_rows([e for batch in batches for e in batch])
    assert wal_files(wal_dir) == []


def test_publish_before_ack_answers_once_the_events_are_in_parquet_on_s3(
    start_log, tmp_path, s3_prefix
):
    """With ``publish_before_ack`` an answered append is already on S3 (no flush, an hour's
    flush interval): losing the WAL's disk then loses nothing."""
    wal_dir = tmp_path / "wal"
    log = start_log(s3_prefix, wal_dir, publish_before_ack=True)
    first = make_events("a", 3)
    assert ray.get(log.append.remote(first)) == 0  # nothing pending: all published
    assert all_rows(read_log(s3_prefix)) == as_rows(first)
    batches = [make_events(f"u{i}", 2, start=i) for i in range(12)]
    ray.get([log.append.remote(batch) for batch in batches])
    contents = read_log(s3_prefix)
    assert all_rows(contents) == as_rows([*first, *(e for b in batches for e in b)])
    assert wal_files(wal_dir) == []


def test_a_second_log_on_a_held_wal_stands_by_then_takes_over(start_log, tmp_path):
    """Two clusters over one WAL directory (an upgrade on a shared volume): the second log
    neither blocks nor touches the first's segments; it refuses appends (nothing written, so
    nothing acknowledged) and says so in its state, and takes the WAL over, publishing what
    the first left, once the first is gone."""
    from recsys_dist.serving.event_log import LOCK_WAIT_S

    log_dir, wal_dir = str(tmp_path / "log"), tmp_path / "wal"
    first = start_log(log_dir, wal_dir, exact_wal=True)
    ray.get(first.append.remote(make_events("a", 3)))  # acknowledged, in the WAL only
    second = start_log(log_dir, wal_dir, exact_wal=True)
    stats = ray.get(second.stats.remote(), timeout=LOCK_WAIT_S + 60)
    assert stats["state"] == "standby" and stats["pending"] == 0
    with pytest.raises(ray.exceptions.RayTaskError, match="held by another event log"):
        ray.get(second.append.remote(make_events("b", 1)))
    ray.get(first.append.remote(make_events("a", 2, start=3)))  # the first goes on
    assert ray.get(first.stats.remote())["pending"] == 5 and read_log(log_dir) == {}

    ray.kill(first, no_restart=True)  # its cluster deleted after the switch
    wait_for(lambda: ray.get(second.stats.remote())["state"] == "active", "the take-over")
    ray.get(second.append.remote(make_events("b", 1)))
    ray.get(second.flush.remote())
    published = Counter(row for rows in read_log(log_dir).values() for row in rows)
    assert published == as_rows(
        [*make_events("a", 3), *make_events("a", 2, start=3), *make_events("b", 1)]
    )
