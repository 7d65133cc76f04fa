"""The online service's durable event log: acknowledged events become Parquet for retraining.

One named, detached, async Ray actor (:class:`EventLog`) receives every batch the service
accepts. A batch is first appended to a local **write-ahead log** (WAL) segment and fsynced;
only then does ``append`` return, so the service acknowledges an event only once it is on disk.
Segments are turned into Parquet micro-batches in the canonical event layout
(``LOG_DIR/events/part-<segment id>.parquet``, :data:`schema.EVENT_SCHEMA`, local or ``s3://``)
when they hold ``flush_rows`` events or are ``flush_seconds`` old, so
``recsys-dist prepare --append --data LOG_DIR`` reads them like any other event log.

Guarantees: an acknowledged event is never lost, whether a replica or the log actor itself
crashes after acknowledging (a restarted actor converts the segments it finds before serving),
and appears exactly once: a segment is deleted only after its Parquet file exists, and the
file's name derives from the segment's, so redoing a conversion rewrites the same file. Events
of one ``append`` call always land in the same file. Segment ids start with the wall-clock time
in nanoseconds, so the files sort in arrival order (``prepare`` breaks equal timestamps by file
order); a random suffix keeps them unique across restarts, nodes and service instances. A call
that failed may still have been written (a crash after the fsync, before the answer): a client
that resends it adds an exact duplicate, which ``prepare`` drops.

WAL segment format (``<wal_dir>/<segment id>.wal``): the 8-byte magic :data:`WAL_MAGIC`, then
one record per ``append`` call: ``uint32 length, uint32 crc32`` (little-endian) and a JSON
payload ``[[user_id, item_id, timestamp, event_type, rating], ...]``. A crash in mid-write
leaves a torn last record, which the checksum exposes; it was never acknowledged and is dropped
(and counted). Concurrent ``append`` calls are written together with one fsync (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import json
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray

from recsys_dist import schema, storage
from recsys_dist.serving.detached import detached_actor
from recsys_dist.serving.store import Event

logger = logging.getLogger(__name__)

EVENT_LOG_ACTOR = "recsys_dist_event_log"
WAL_MAGIC = b"RSDWAL1\n"
WAL_SUFFIX = ".wal"
LOCK_FILE = "LOCK"
QUARANTINE_DIR = "quarantine"  # in the WAL directory: segments that cannot become Parquet
# A crashed predecessor's lock goes with its process, within a second or two: wait that long,
# then stand by (a live log holds it: another cluster on the same volume), retrying.
LOCK_WAIT_S = 5.0
TAKEOVER_POLL_S = 0.5
# Events are users' behaviour: the WAL, its folders and the local Parquet files are readable
# by the service's own user only.
FILE_MODE, DIR_MODE = 0o600, 0o700
_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_MAX_RETRY_S = 60.0
_INT64 = range(-(2**63), 2**63)


class WalInUse(RuntimeError):
    """An append to a log standing by: another log holds its WAL directory, nothing was
    written, and the caller must not acknowledge."""


class LogRetired(RuntimeError):
    """An append to a log that a deploy with other settings has replaced: nothing was written,
    and the caller must not acknowledge (the client sends again, to the new log)."""


class UnconvertibleSegment(ValueError):
    """A WAL segment whose complete records cannot become rows of the event schema. Retrying
    cannot help, so it is quarantined rather than left blocking every segment after it."""


@dataclass
class _Segment:
    """The open WAL segment: appends go here until it is sealed."""

    path: str
    fd: int
    opened: float  # time.monotonic() when opened
    rows: int = 0


def encode_record(events: Sequence[Event]) -> bytes:
    """One WAL record (header and payload) holding one ``append`` call's events."""
    payload = json.dumps([_row(e) for e in events], separators=(",", ":")).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _row(event: Event) -> list:
    """The event as the WAL stores it, in the schema's types: a value that does not fit fails
    the ``append`` call here, never the Parquet conversion of a whole segment later."""
    kind, rating, timestamp = event.event_type, event.rating, int(event.timestamp)
    if timestamp not in _INT64:
        raise ValueError(f"timestamp {timestamp} does not fit the event schema's int64")
    return [
        str(event.user_id),
        str(event.item_id),
        timestamp,
        None if kind is None else str(kind),
        None if rating is None else float(rating),
    ]


def read_segment(path: str) -> tuple[pa.Table, int]:
    """The complete records of a WAL segment as an :data:`schema.EVENT_SCHEMA` table, and the
    number of torn records after them (0 or 1: a crash can only tear the last one).

    Raises:
        UnconvertibleSegment: For complete records that do not fit the schema.
        ValueError: For a file that is not a WAL segment (it is left alone, never deleted).
    """
    data = Path(path).read_bytes()
    if not data.startswith(WAL_MAGIC):
        if WAL_MAGIC.startswith(data):  # torn while the segment was being created
            return _to_table([]), 0
        raise ValueError(f"{path}: not an event-log WAL segment")
    rows: list[list] = []
    offset = len(WAL_MAGIC)
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        rows.extend(json.loads(payload))
        offset += _HEADER.size + length
    try:
        return _to_table(rows), int(offset < len(data))
    except (ValueError, TypeError, OverflowError, pa.ArrowException) as error:
        raise UnconvertibleSegment(f"{path}: {error}") from error


def _to_table(rows: list[list]) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in schema.EVENT_SCHEMA]
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema.EVENT_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=schema.EVENT_SCHEMA)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` at the end of the segment and fsync: after this it survives a crash."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _write_parquet(table: pa.Table, path: str) -> None:
    """Write one Parquet file so that no reader ever sees half of it.

    S3 makes an object visible only once complete. A local file is written under a hidden name
    (``list_files`` skips it), fsynced, then renamed: its WAL segment is deleted next, so the
    file must be on disk first.
    """
    if storage.is_remote(path):
        storage.write_parquet(table, path)
        return
    directory, name = os.path.split(path)
    hidden = os.path.join(directory, f".{name}.tmp")
    storage.write_parquet(table, hidden)
    os.chmod(hidden, FILE_MODE)
    _fsync_path(hidden)
    os.replace(hidden, path)
    _fsync_path(directory, directory=True)


def _lock(wal_dir: str, wait_s: float) -> int | None:
    """Hold ``wal_dir`` exclusively (a second log on it could publish another's live segment);
    ``None`` when another log still holds it after ``wait_s``."""
    fd = os.open(os.path.join(wal_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, FILE_MODE)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.1)  # the holder may be a process that is exiting: poll until it has


class EventLog:
    """Appends acknowledged events to a WAL and publishes them as Parquet micro-batches.

    Used as an async Ray actor (see :func:`event_log_actor`); all state lives on its event
    loop. File work runs in threads so a slow disk or S3 never stalls other calls: WAL writes
    in the default executor (one at a time, under ``_wal_lock``), Parquet conversions in a
    single thread of their own, so they stay in order even if a caller gives up waiting.

    Args:
        log_dir: Where the Parquet files go (``LOG_DIR/events/``); local or ``s3://``.
        wal_dir: A directory for this log alone: node-local, or shared by every node (a
            mounted volume) so that a restart on another node finds the segments.
        flush_rows: Seal a segment once it holds at least this many events.
        flush_seconds: ... or once it is this old.
        publish_before_ack: Answer ``append`` only once its events are in a Parquet file in
            ``log_dir`` (each write's segment is published at once), not when the WAL has
            them: nothing acknowledged then depends on the WAL's disk, at the cost of one
            Parquet write (an object-store PUT on ``s3://``) per group of concurrent appends.
    """

    def __init__(
        self,
        log_dir: str,
        wal_dir: str,
        flush_rows: int,
        flush_seconds: float,
        publish_before_ack: bool = False,
    ):
        if flush_rows < 1 or not flush_seconds > 0:
            raise ValueError(f"flush_rows={flush_rows} and flush_seconds={flush_seconds} > 0")
        self._log_dir = storage.absolute(log_dir)
        self._wal_dir = os.path.abspath(wal_dir)
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._publish_before_ack = publish_before_ack
        self._retired = False
        self._tick = min(1.0, max(0.05, flush_seconds / 4))
        os.makedirs(self._wal_dir, mode=DIR_MODE, exist_ok=True)
        self._lock_fd = _lock(self._wal_dir, LOCK_WAIT_S)
        self._segment: _Segment | None = None
        self._sealed: dict[str, int] = {}  # sealed segment path -> events, oldest first
        self._queue: list[tuple[bytes, int, asyncio.Future]] = []  # appends not yet written
        self._queued = asyncio.Event()
        self._wake = asyncio.Event()  # a segment was sealed
        self._wal_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")
        self._last_id = 0
        self._tasks: list[asyncio.Task] = []
        counters = ("appended", "files_written", "segments_recovered", "segments_unreadable")
        counters += ("segments_quarantined", "publish_failures")
        self._counts = dict.fromkeys((*counters, "torn_records"), 0)
        if self._lock_fd is None:
            logger.warning(
                "event log: %s is held by another event log (another cluster on the same "
                "volume?); standing by, and taking over once it is released",
                self._wal_dir,
            )
        else:
            self._recover()
        self._start_tasks()

    # --- the actor's methods ---------------------------------------------------------------

    async def append(self, events: list[Event]) -> int:
        """Make ``events`` durable; returns the events now pending (in the WAL, not yet in
        Parquet). Once this returns the caller may acknowledge them."""
        self._start_tasks()
        if self._retired:
            raise LogRetired(f"the event log on {self._wal_dir} was retired; send again")
        if self._lock_fd is None:
            raise WalInUse(f"{self._wal_dir} is held by another event log; nothing written")
        if not events:
            return self._pending()
        done = asyncio.get_running_loop().create_future()
        self._queue.append((encode_record(events), len(events), done))
        self._queued.set()
        return await asyncio.shield(done)  # a caller that gives up does not undo the write

    async def flush(self) -> list[str]:
        """Publish the current segment and every sealed one now; returns the files written.

        Raises:
            OSError: When a Parquet file cannot be written (the events stay in the WAL and
                are retried in the background).
        """
        self._start_tasks()
        async with self._wal_lock:
            self._seal()
        return await self._publish_sealed()

    async def settings(self) -> dict:
        """What it was built with, compared at every deploy (:mod:`detached`)."""
        return {
            "log_dir": self._log_dir,
            "wal_dir": self._wal_dir,
            "flush_rows": self._flush_rows,
            "flush_seconds": self._flush_seconds,
            "publish_before_ack": self._publish_before_ack,
        }

    async def retire(self) -> list[str]:
        """Hand over to a log with other settings: refuse new appends, write the ones
        queued, publish every acknowledged event, then let go of the WAL directory. Returns
        the files written.

        Raises:
            OSError: When the events cannot be published (the log keeps running as it was).
        """
        self._start_tasks()
        self._retired = True
        async with self._wal_lock:
            batch, self._queue = self._queue, []
            if batch:
                await self._write(batch)
            self._seal()
        try:
            written = await self._publish_sealed()
        except Exception:
            self._retired = False  # still the service's log: the deploy fails, nothing is lost
            raise
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        logger.info("event log on %s retired (%d files published)", self._wal_dir, len(written))
        return written

    async def stats(self) -> dict:
        """Counters since this actor (re)started, for tests and monitoring."""
        return {
            **self._counts,
            "state": self._state(),
            "pending": self._pending(),
            "sealed_segments": len(self._sealed),
            "log_dir": self._log_dir,
            "wal_dir": self._wal_dir,
            "node_id": ray.get_runtime_context().get_node_id(),  # whose disk holds the WAL
        }

    def _state(self) -> str:
        """``active``; ``standby`` while another log holds the WAL; ``retired`` once replaced."""
        if self._retired:
            return "retired"
        return "standby" if self._lock_fd is None else "active"

    # --- the WAL ----------------------------------------------------------------------------

    def _start_tasks(self) -> None:
        """Start the writer and the flusher on the actor's event loop (once), and, standing
        by, the task that takes the WAL over once it is free."""
        if self._tasks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # constructed off the loop: the first call starts them
        self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._flush_loop())]
        if self._lock_fd is None:
            self._tasks.append(loop.create_task(self._take_over()))

    async def _take_over(self) -> None:
        """Wait for the holder of the WAL to let go (its cluster deleted after an upgrade),
        then publish what it left and start taking appends."""
        while self._lock_fd is None and not self._retired:
            await asyncio.sleep(TAKEOVER_POLL_S)
            self._lock_fd = await asyncio.to_thread(_lock, self._wal_dir, 0.0)
        if self._lock_fd is not None:
            self._recover()
            logger.warning("event log: took over %s", self._wal_dir)

    def _pending(self) -> int:
        current = self._segment.rows if self._segment else 0
        return current + sum(self._sealed.values())

    async def _write_loop(self) -> None:
        """Write queued appends, all that arrived meanwhile in one go and one fsync."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            async with self._wal_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    continue
                try:
                    await self._write(batch)
                except Exception as error:  # a writer that died would leave callers waiting
                    logger.exception(
                        "event log: WAL write failed; %d calls not acknowledged", len(batch)
                    )
                    self._seal()  # a partly written record stays last in its segment: torn
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(error)

    async def _write(self, batch: list[tuple[bytes, int, asyncio.Future]]) -> None:
        """Append the batch's records to the open segment, fsync, then answer its callers."""
        if self._segment is None:
            self._segment = await asyncio.to_thread(self._open_segment)
        await asyncio.to_thread(_write_all, self._segment.fd, b"".join(r for r, _, _ in batch))
        rows = sum(count for _, count, _ in batch)
        self._segment.rows += rows
        self._counts["appended"] += rows
        if self._segment.rows >= self._flush_rows or self._publish_before_ack:
            self._seal()
        if self._publish_before_ack:  # a failure here answers no caller: they send again
            await self._publish_sealed()
        pending = self._pending()
        for _, _, done in batch:
            if not done.done():
                done.set_result(pending)

    def _open_segment(self) -> _Segment:
        """A new, empty segment whose name (and so its directory entry) is already durable."""
        self._last_id = max(time.time_ns(), self._last_id + 1)
        name = f"{self._last_id:020d}-{secrets.token_hex(4)}{WAL_SUFFIX}"
        path = os.path.join(self._wal_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        _write_all(fd, WAL_MAGIC)
        _fsync_path(self._wal_dir, directory=True)
        return _Segment(path, fd, time.monotonic())

    def _seal(self) -> None:
        """Close the open segment (every record in it is already fsynced) for publishing."""
        if self._segment is None:
            return
        segment, self._segment = self._segment, None
        os.close(segment.fd)
        self._sealed[segment.path] = segment.rows
        self._wake.set()

    # --- Parquet ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Seal the segment once it is ``flush_seconds`` old; publish sealed segments, retrying
        failures (S3 unreachable, ...) with a growing delay — they wait safely in the WAL."""
        failures, retry_at = 0, 0.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            segment = self._segment
            if segment and time.monotonic() - segment.opened >= self._flush_seconds:
                async with self._wal_lock:
                    if self._segment is segment:
                        self._seal()
            if not self._sealed or time.monotonic() < retry_at:
                continue
            try:
                await self._publish_sealed()
                failures = 0
            except Exception:  # logged; the events stay in the WAL
                failures += 1
                self._counts["publish_failures"] += 1
                retry_at = time.monotonic() + min(_MAX_RETRY_S, 2.0**failures)
                logger.warning("event log: publishing failed (try %d)", failures, exc_info=True)

    async def _publish_sealed(self) -> list[str]:
        """Publish sealed segments, oldest first, stopping at the first failure."""
        written = []
        loop = asyncio.get_running_loop()
        async with self._publish_lock:
            for path in list(self._sealed):
                result = await loop.run_in_executor(self._publisher, self._publish, path)
                written += self._published(path, *result)
        return written

    def _publish(self, path: str) -> tuple[str | None, int, bool]:
        """Write a sealed segment's Parquet file, then delete the segment; returns the file
        (``None`` when the segment held no complete record, was already published or was
        quarantined), the torn records dropped, and whether it was quarantined."""
        if not os.path.exists(path):
            return None, 0, False
        try:
            table, torn = read_segment(path)
        except UnconvertibleSegment as error:
            self._quarantine(path, error)
            return None, 0, True
        target = None
        if table.num_rows:
            segment_id = os.path.basename(path).removesuffix(WAL_SUFFIX)
            target = storage.join(self._log_dir, schema.EVENTS_DIR, f"part-{segment_id}.parquet")
            _write_parquet(table, target)
        os.remove(path)
        return target, torn, False

    def _quarantine(self, path: str, error: Exception) -> None:
        """Move an unconvertible segment aside (``WAL_DIR/quarantine/``), kept for a person to
        look at, so the segments after it are published."""
        folder = os.path.join(self._wal_dir, QUARANTINE_DIR)
        os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        os.replace(path, os.path.join(folder, os.path.basename(path)))
        _fsync_path(folder, directory=True)
        _fsync_path(self._wal_dir, directory=True)
        logger.error("event log: quarantined %s in %s (%s)", path, folder, error)

    def _published(self, path: str, target: str | None, torn: int, quarantined: bool) -> list[str]:
        self._sealed.pop(path, None)
        self._counts["segments_quarantined"] += quarantined
        self._counts["torn_records"] += torn
        if torn:
            logger.warning(
                "event log: dropped a torn, unacknowledged record at the end of %s", path
            )
        if target is None:
            return []
        self._counts["files_written"] += 1
        logger.info("event log: wrote %s", target)
        return [target]

    def _recover(self) -> None:
        """Publish the segments a previous run left behind (a crash, a kill, a redeploy)."""
        leftovers = []
        for path in sorted(glob.glob(os.path.join(self._wal_dir, "*" + WAL_SUFFIX))):
            try:
                self._sealed[path] = read_segment(path)[0].num_rows
                leftovers.append(path)
            except UnconvertibleSegment as error:
                self._quarantine(path, error)
                self._counts["segments_quarantined"] += 1
            except ValueError:  # kept for a person to look at; never deleted unread
                logger.error("event log: %s is not a WAL segment; left in place", path)
                self._counts["segments_unreadable"] += 1
        self._counts["segments_recovered"] = len(leftovers)
        if leftovers:
            logger.info(
                "event log: recovering %d WAL segments from %s", len(leftovers), self._wal_dir
            )
        try:
            for path in leftovers:
                self._published(path, *self._publish(path))
        except Exception:  # still in the WAL; the flusher retries
            logger.warning("event log: recovery could not publish yet; retrying", exc_info=True)


def event_log_actor(
    log_dir: str,
    wal_dir: str,
    flush_rows: int,
    flush_seconds: float,
    name: str = EVENT_LOG_ACTOR,
    scheduling_strategy=None,
    publish_before_ack: bool = False,
    replace: bool = False,
    label_selector: dict[str, str] | None = None,
) -> ray.actor.ActorHandle:
    """The named event-log actor, created by the first caller and shared by every replica.

    It restarts after a crash without limit (recovering its WAL before serving again), and a
    call in flight during a crash fails rather than retries: the caller then does not
    acknowledge, and the client sends again. Its WAL lives in ``wal_dir/<name>``, so service
    instances may share ``wal_dir``. It reserves no CPU (it mostly waits on the disk). One
    running with other settings is retired and replaced when ``replace`` (a deploy), and
    refused otherwise (:mod:`recsys_dist.serving.detached`).

    If the node it runs on is lost, Ray restarts it on another node, which recovers the WAL
    only if ``wal_dir`` is shared storage mounted at the same path on every node (a
    ReadWriteMany volume: cluster/kuberay-rayservice.yaml); on a node-local disk the segments
    wait there until a log starts on that node again. ``scheduling_strategy`` (one of Ray's,
    e.g. a soft ``NodeAffinitySchedulingStrategy``) or ``label_selector`` (e.g. a node group)
    places it; by default Ray does (a zero-CPU detached actor goes beside its creator).
    """
    settings = {
        "log_dir": storage.absolute(log_dir),
        "wal_dir": os.path.join(os.path.abspath(wal_dir), name),
        "flush_rows": flush_rows,
        "flush_seconds": float(flush_seconds),
        "publish_before_ack": publish_before_ack,
    }
    return detached_actor(
        EventLog,
        name,
        settings,
        replace=replace,
        max_restarts=-1,
        max_task_retries=0,
        num_cpus=0,
        scheduling_strategy=scheduling_strategy,
        label_selector=label_selector,
    )
