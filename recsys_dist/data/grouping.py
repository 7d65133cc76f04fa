"""Group an event log by user in memory that does not grow with the log.

Ray Data's generic ``groupby`` sorts the whole log in one shuffle and calls Python once per
group, which is slow with millions of small groups and holds more the bigger the log gets.
Grouping here is a two-step shuffle through storage instead:

1. **scatter** — every reader task validates its file batch by batch, hashes each event's user
   to one of ``num_buckets`` buckets and appends it to a per-bucket buffer; full buffers are
   written as Arrow IPC parts under ``SCRATCH/bucket=K/``. A task holds one buffer.
2. **gather** — one task per bucket reads that bucket's parts and merges them into a sorted,
   de-duplicated state (user, time, log order) in which each user keeps only the most recent
   ``max_history`` events. Parts are merged in rounds of ``compact_rows`` events, so a skewed
   user (a bot with millions of events) costs rounds, not memory; such users are reported.

The number of buckets grows with the log (``bucket_rows`` events each), so the memory of a
task — and of the cluster, which runs one task per CPU — stays flat as the log grows.
Bucket assignment uses a fixed hash of the user id, so an incremental ``prepare`` months later
puts a user's new events in the same bucket as the old ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.data import events as events_io
from recsys_dist.data.events import ORDER
from recsys_dist.data.parallel import map_tasks
from recsys_dist.data.vocab import Vocabulary

logger = logging.getLogger(__name__)

SCATTER_FLUSH_ROWS = 1 << 20  # events a reader task buffers before writing its bucket parts
SKEWED_USERS_REPORTED = 10
# What a bucket part keeps of an event: enough to order, de-duplicate and build sequences.
PART_SCHEMA = pa.schema(
    [
        schema.EVENT_SCHEMA.field(schema.USER_ID),
        schema.EVENT_SCHEMA.field(schema.ITEM_ID),
        schema.EVENT_SCHEMA.field(schema.TIMESTAMP),
        schema.EVENT_SCHEMA.field(schema.EVENT_TYPE),
        pa.field(ORDER, pa.int64(), nullable=False),
        schema.EVENT_SCHEMA.field(schema.RATING),
    ]
)
# The same events once items are vocabulary indices (the merge state of ``prepare``).
INDEXED_PART_SCHEMA = PART_SCHEMA.set(1, pa.field(schema.ITEM_ID, pa.int32(), nullable=False))
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
_HASH_BASE = np.uint64(0x100000001B3)  # FNV-1a prime, used as a polynomial base


@dataclass(frozen=True)
class GroupingSpec:
    """How events are grouped: set once per prepared dataset (in its manifest)."""

    num_buckets: int
    max_history: int  # events kept per user, most recent first
    dedup: bool  # drop exact duplicates (same user, item, time and event type)
    compact_rows: int  # events a gather task merges per round: bounds its memory


def spec_for(rows: int, bucket_rows: int, max_history: int, dedup: bool) -> GroupingSpec:
    """Enough buckets for ``rows`` events that each holds at most about ``bucket_rows``, in a
    multiple of the CPU count so that the last round of gather tasks keeps every CPU busy.

    ``rows`` comes from the Parquet footers (:func:`events.readable`), so no data is read to
    plan the shuffle.
    """
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    rounds = max(1, -(-rows // (bucket_rows * cpus)))  # whole rounds: no CPU idles at the end
    return GroupingSpec(rounds * cpus, max_history, dedup, bucket_rows)


def user_buckets(user_ids: pa.Array | pa.ChunkedArray, num_buckets: int) -> np.ndarray:
    """Bucket of every user id: a polynomial hash of its UTF-8 bytes, finalised by splitmix64.

    Written out rather than taken from a library so that it can never change under an
    incremental dataset: the same id goes to the same bucket in every release. Each distinct
    id is hashed once (a log repeats every user many times).
    """
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    if len(user_ids) == 0:
        return np.zeros(0, np.int64)
    encoded = pc.dictionary_encode(user_ids)
    distinct = _hash_strings(pc.cast(encoded.dictionary, pa.large_string()))
    return (distinct % np.uint64(num_buckets)).astype(np.int64)[encoded.indices.to_numpy()]


def _hash_strings(ids: pa.LargeStringArray) -> np.ndarray:
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].astype(np.uint64)
    lengths = np.diff(offsets)
    if lengths.min() == 0:
        raise ValueError("user ids must be non-empty strings")
    position = np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    powers = np.cumprod(np.full(int(lengths.max()), _HASH_BASE, np.uint64))
    with np.errstate(over="ignore"):
        value = np.add.reduceat(data * powers[position], offsets[:-1] - offsets[0])
        value ^= lengths.astype(np.uint64)
        return _splitmix64(value)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# --- scatter ---------------------------------------------------------------------------------


class FileSummary(Protocol):
    """Something a scatter task learns from every validated batch of its file (e.g. counts)."""

    def add(self, table: pa.Table) -> None: ...

    def result(self) -> pa.Table:
        """One row: what the driver needs of this file."""
        ...


def scatter(
    files: list[str],
    first_file_index: int,
    scratch_dir: str,
    num_buckets: int,
    on_bad_rows: str,
    tally=None,
    summarize: Callable[[], FileSummary] | None = None,
) -> Iterator[pa.Table]:
    """Validate ``files`` and write their events into bucket parts, one Ray task per file.

    Yields one row per file as its task ends: ``events`` accepted, and the columns of
    ``summarize()``'s result when given, so the driver learns about the log in the same pass.
    """
    calls = [
        (path, first_file_index + i, scratch_dir, num_buckets, on_bad_rows, tally, summarize)
        for i, path in enumerate(files)
    ]
    yield from map_tasks(_scatter_file, calls, desc="scatter", unit="file")


def _scatter_file(
    path: str,
    file_index: int,
    scratch_dir: str,
    num_buckets: int,
    on_bad_rows: str,
    tally,
    summarize,
) -> pa.Table:
    buffer = _BucketBuffer(scratch_dir, num_buckets, f"f{file_index:07d}")
    summary = summarize() if summarize else None
    for table in events_io.validated_batches(path, file_index, on_bad_rows, tally):
        buffer.add(table)
        if summary is not None:
            summary.add(table)
        if buffer.rows >= SCATTER_FLUSH_ROWS:
            buffer.flush()
    buffer.flush()
    events = pa.array([buffer.total], pa.int64())
    if summary is None:
        return pa.table({"events": events})
    return summary.result().append_column("events", events)


class _BucketBuffer:
    """Events of one reader task waiting to be written, split by bucket.

    Part names derive from the file index and a flush counter, so a retried task rewrites
    exactly the parts it wrote before and nothing is counted twice.
    """

    def __init__(self, scratch_dir: str, num_buckets: int, prefix: str) -> None:
        self.scratch_dir, self.num_buckets, self.prefix = scratch_dir, num_buckets, prefix
        self.tables: list[pa.Table] = []
        self.rows = self.total = self.flushes = 0

    def add(self, table: pa.Table) -> None:
        self.tables.append(table.select(PART_SCHEMA.names).cast(PART_SCHEMA))
        self.rows += table.num_rows
        self.total += table.num_rows

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.concat_tables(self.tables)
        buckets = user_buckets(table.column(schema.USER_ID), self.num_buckets)
        for bucket in np.unique(buckets):  # a filter per bucket beats sorting string columns
            name = f"{self.prefix}-{self.flushes:04d}.arrow"
            part = table.filter(pa.array(buckets == bucket))
            _write_ipc(part, bucket_dir(self.scratch_dir, int(bucket)), name)
        self.tables, self.rows = [], 0
        self.flushes += 1


def bucket_dir(scratch_dir: str, bucket: int) -> str:
    return storage.join(scratch_dir, f"bucket={bucket:05d}")


def _write_ipc(table: pa.Table, directory: str, name: str) -> None:
    with (
        storage.open_output(storage.join(directory, name)) as sink,
        pa.ipc.new_file(sink, PART_SCHEMA, options=_IPC_OPTIONS) as writer,
    ):
        writer.write_table(table)


def _read_ipc(path: str) -> pa.Table:
    with storage.open_input(path) as source:
        return pa.ipc.open_file(source).read_all()


# --- gather ----------------------------------------------------------------------------------


def bucket_parts(scratch_dir: str, num_buckets: int) -> list[list[str]]:
    """The parts of every bucket, listed once on the driver (one listing call on S3)."""
    parts: list[list[str]] = [[] for _ in range(num_buckets)]
    if not storage.exists(scratch_dir):
        return parts
    for path in storage.list_files(scratch_dir, ".arrow"):
        bucket = int(path.rsplit("bucket=", 1)[1].split("/", 1)[0])
        parts[bucket].append(path)
    return parts


def users_file(users_dir: str, bucket: int) -> str:
    return storage.join(users_dir, f"bucket-{bucket:05d}.parquet")


def gather(
    scratch_dir: str,
    spec: GroupingSpec,
    users_dir: str,
    earlier_users_dir: str | None = None,
    summarize: Callable[[pa.Table], pa.Table] | None = None,
    vocabulary: ray.ObjectRef | None = None,
) -> Iterator[pa.Table]:
    """One Ray task per bucket merges its parts into users, written to
    ``users_dir/bucket-K.parquet``; yields ``summarize(users)`` per bucket as it ends.

    With ``earlier_users_dir`` (incremental mode) the bucket's earlier users are merged in.
    With ``vocabulary`` (a reference to a :class:`Vocabulary` that knows every item) users hold
    item indices (:data:`schema.PREPARED_USER_SCHEMA`), otherwise raw ids
    (:data:`schema.USER_SEQUENCE_SCHEMA`).
    """
    parts = bucket_parts(scratch_dir, spec.num_buckets)
    calls = [
        (
            parts[bucket],
            users_file(earlier_users_dir, bucket) if earlier_users_dir else None,
            users_file(users_dir, bucket),
            spec,
            summarize,
            vocabulary,
        )
        for bucket in range(spec.num_buckets)
    ]
    yield from map_tasks(_gather_task, calls, desc="gather", unit="bucket")


def _gather_task(
    parts: list[str], earlier: str | None, output: str, spec: GroupingSpec, summarize, vocab
) -> pa.Table | None:
    """``vocab`` arrives resolved: Ray passes a task the value of a top-level ``ObjectRef``."""
    users = gather_bucket(parts, earlier, spec, vocab)
    storage.write_parquet(users, output, dictionary=[schema.EVENT_TYPES])
    return summarize(users) if summarize else None


def gather_bucket(
    parts: list[str],
    previous_users: str | None,
    spec: GroupingSpec,
    vocab: Vocabulary | None = None,
) -> pa.Table:
    """Merge one bucket's parts (and its earlier users, when appending) into user sequences,
    one row per user; items become ``vocab`` indices when it is given."""
    state, counters = _previous_state(previous_users, vocab is not None)
    pending: list[pa.Table] = []
    pending_rows = 0
    for path in parts:
        table = _read_ipc(path)
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows >= spec.compact_rows:
            new = _with_indices(pa.concat_tables(pending), vocab)
            state, merged = compact(state, new, spec, final=False)
            counters.append(merged)
            pending, pending_rows = [], 0
    new = _with_indices(pa.concat_tables(pending) if pending else PART_SCHEMA.empty_table(), vocab)
    state, merged = compact(state, new, spec, final=True)
    counters.append(merged)
    return _users_table(state, _sum_counters(counters), vocab is not None)


def _with_indices(events: pa.Table, vocab: Vocabulary | None) -> pa.Table:
    """Raw item ids → vocabulary indices (one lookup per merge round, not per part)."""
    if vocab is None:
        return events
    indices = vocab.to_indices(events.column(schema.ITEM_ID))
    if events.num_rows and indices.min() < schema.NUM_SPECIAL_TOKENS:
        raise RuntimeError("an accepted event's item is missing from the vocabulary")
    column = pa.array(indices.astype(np.int32))
    return events.set_column(1, INDEXED_PART_SCHEMA.field(schema.ITEM_ID), column)


COUNTER_SCHEMA = pa.schema(
    [
        pa.field(schema.USER_ID, pa.string()),
        pa.field("accepted", pa.int64()),
        pa.field("duplicates", pa.int64()),
        pa.field("truncated", pa.int64()),
    ]
)


def compact(
    state: pa.Table, new: pa.Table, spec: GroupingSpec, final: bool = True
) -> tuple[pa.Table, pa.Table]:
    """Merge ``new`` events into ``state``: sorted, de-duplicated, truncated per user.

    State rows stay sorted by (user, time, log order). Returns the new state and, per user,
    events accepted from ``new``, duplicates dropped and events truncated in this round.
    Before the ``final`` round a user also keeps the events that share a timestamp with the
    oldest kept one, so a late duplicate of one of them is still recognised: the sequence is
    then exactly that of one global sort. (A duplicate of an event cut in an earlier round is
    counted as cut rather than as a duplicate; the two counts still add up.)
    """
    table = pa.concat_tables([state, new]).combine_chunks()
    if table.num_rows == 0:
        return table, COUNTER_SCHEMA.empty_table()
    users = pc.dictionary_encode(table.column(schema.USER_ID)).chunk(0)
    user_code = users.indices.to_numpy()
    times = table.column(schema.TIMESTAMP).to_numpy()
    order = np.lexsort((table.column(ORDER).to_numpy(), times, user_code))
    user_code, times = user_code[order], times[order]
    duplicate = (
        _duplicates(table, order, user_code, times) if spec.dedup else np.zeros(len(order), bool)
    )
    kept = np.flatnonzero(~duplicate)
    too_old = _too_old(user_code[kept], times[kept], spec.max_history, final)
    truncated = np.zeros(len(order), bool)
    truncated[kept[too_old]] = True
    is_new = order >= state.num_rows
    counts = [
        np.bincount(user_code[mask], minlength=len(users.dictionary))
        for mask in (is_new, duplicate, truncated)
    ]
    touched = np.flatnonzero(counts[0] + counts[1] + counts[2])
    counters = pa.table(
        [users.dictionary.take(pa.array(touched)), *(pa.array(c[touched]) for c in counts)],
        schema=COUNTER_SCHEMA,
    )
    return table.take(pa.array(order[~duplicate & ~truncated])), counters


def _duplicates(table: pa.Table, order, user_code, times) -> np.ndarray:
    """Rows (in sorted order) that repeat an earlier event's user, item, time and type.

    Only rows sharing a user and a timestamp with a neighbour can be duplicates, so the key
    is built just for those.
    """
    same = (user_code[1:] == user_code[:-1]) & (times[1:] == times[:-1])
    in_run = np.zeros(len(order), bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    candidates = np.flatnonzero(in_run)
    duplicate = np.zeros(len(order), bool)
    if not len(candidates):
        return duplicate
    run_id = np.cumsum(np.r_[True, ~same])[candidates]
    rows = pa.array(order[candidates])
    items = _codes(table.column(schema.ITEM_ID).take(rows))
    kinds = _codes(table.column(schema.EVENT_TYPE).take(rows))
    key = (run_id * (items.max() + 1) + items) * (kinds.max() + 1) + kinds
    _, first = np.unique(key, return_index=True)
    duplicate[candidates] = True
    duplicate[candidates[first]] = False  # candidates are in log order within a run
    return duplicate


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.indices.to_numpy().astype(np.int64)


def _too_old(user_code: np.ndarray, times: np.ndarray, max_history: int, final: bool):
    """Rows (sorted by user, time) outside their user's most recent ``max_history``; before
    the final round, rows tied in time with the oldest kept row stay."""
    if not len(user_code):
        return np.zeros(0, bool)
    starts = np.flatnonzero(np.r_[True, user_code[1:] != user_code[:-1]])
    ends = np.r_[starts[1:], len(user_code)]
    run = np.repeat(np.arange(len(starts)), ends - starts)
    too_old = ends[run] - np.arange(len(user_code)) > max_history
    if final or not too_old.any():
        return too_old
    oldest_kept = times[np.maximum(ends - max_history, starts)]
    return too_old & (times < oldest_kept[run])


def _previous_state(previous_users: str | None, indexed: bool) -> tuple[pa.Table, list[pa.Table]]:
    """Events and counters of the users already prepared in this bucket (incremental mode).

    Their events rank before every new file in log order (positions < any new file's order).
    """
    part_schema = INDEXED_PART_SCHEMA if indexed else PART_SCHEMA
    if previous_users is None or not storage.exists(previous_users):
        return part_schema.empty_table(), []
    fs, inner = storage.resolve(previous_users)
    users = pq.read_table(inner, filesystem=fs)
    items = users.column(schema.ITEMS if indexed else schema.ITEM_IDS)
    lengths = pc.list_value_length(items).to_numpy()
    events = pa.table(
        {
            schema.USER_ID: np.repeat(users.column(schema.USER_ID).to_numpy(), lengths),
            schema.ITEM_ID: pc.list_flatten(items),
            schema.TIMESTAMP: pc.list_flatten(users.column(schema.TIMESTAMPS)),
            schema.EVENT_TYPE: pc.list_flatten(users.column(schema.EVENT_TYPES)),
            ORDER: np.arange(int(lengths.sum()), dtype=np.int64),
            schema.RATING: _flat_ratings(users, int(lengths.sum())),
        },
        schema=part_schema,
    )
    duplicates = users.column(schema.NUM_DUPLICATES)
    counters = pa.table(
        [
            users.column(schema.USER_ID),
            pc.add(users.column(schema.NUM_EVENTS), duplicates),
            duplicates,
            users.column(schema.NUM_TRUNCATED),
        ],
        schema=COUNTER_SCHEMA,
    )
    return events, [counters]


def _flat_ratings(users: pa.Table, events: int) -> pa.Array:
    """The stored users' ratings as nullable event values (users prepared before ratings were
    kept have none: all null)."""
    if schema.RATINGS not in users.column_names:
        return pa.nulls(events, pa.float32())
    return pc.list_flatten(users.column(schema.RATINGS))


def _sum_counters(counters: list[pa.Table]) -> pa.Table:
    columns = COUNTER_SCHEMA.names[1:]
    summed = (
        pa.concat_tables(counters)
        .group_by(schema.USER_ID, use_threads=False)
        .aggregate([(name, "sum") for name in columns])
    )
    return summed.rename_columns([n.removesuffix("_sum") for n in summed.column_names])


def _users_table(state: pa.Table, counters: pa.Table, indexed: bool) -> pa.Table:
    """One row per user from the sorted state, with the user's summed counters."""
    ids = state.column(schema.USER_ID).combine_chunks()
    changes = pc.not_equal(ids.slice(1), ids.slice(0, max(0, len(ids) - 1)))
    starts = np.flatnonzero(np.r_[len(ids) > 0, changes.to_numpy(zero_copy_only=False)])
    offsets = pa.array(np.r_[starts, len(ids)].astype(np.int32))

    def lists(name: str) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, state.column(name).combine_chunks())

    first = ids.take(pa.array(starts, pa.int64()))
    per_user = counters.take(
        pc.index_in(first, value_set=counters.column(schema.USER_ID).combine_chunks())
    )
    accepted, duplicates, truncated = (per_user.column(n) for n in COUNTER_SCHEMA.names[1:])
    users_schema = schema.PREPARED_USER_SCHEMA if indexed else schema.USER_SEQUENCE_SCHEMA
    return pa.table(
        [
            first,
            lists(schema.ITEM_ID),
            lists(schema.TIMESTAMP),
            lists(schema.EVENT_TYPE),
            pc.subtract(accepted, duplicates),
            duplicates,
            truncated,
            pa.ListArray.from_arrays(offsets, state.column(schema.RATING).combine_chunks()),
        ],
        schema=users_schema,
    )


def iter_skewed(users: pa.Table, limit: int = SKEWED_USERS_REPORTED) -> Iterator[dict]:
    """The users whose history was cut to ``max_history``, most events first."""
    cut = users.filter(pc.greater(users.column(schema.NUM_TRUNCATED), 0))
    for row in cut.sort_by([(schema.NUM_EVENTS, "descending")]).slice(0, limit).to_pylist():
        yield {
            "user_id": row[schema.USER_ID],
            "events": row[schema.NUM_EVENTS],
            "truncated": row[schema.NUM_TRUNCATED],
        }
