"""Read canonical event logs with Ray Data, validating every row on the way in.

Each Parquet file is streamed batch by batch inside a Ray task, so a bad row can be named by
file, row number and field, and no task holds more than one batch of one file. With
``on_bad_rows="skip"`` bad rows are skipped and counted per file in a small tally actor, so
the counts reach the manifest: nothing accepted is ever silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.errors import MissingInputError, UserInputError

logger = logging.getLogger(__name__)

ORDER = "_order"  # int64: file index << 40 | row number — the stable tie-break for equal times
_ROW_BITS = 40
READ_BATCH_ROWS = 262_144
_NULLABLE_EVENT_SCHEMA = pa.schema([f.with_nullable(True) for f in schema.EVENT_SCHEMA])


class BadEventError(UserInputError):
    """A row of an event log that cannot be accepted; the message names file, row and field."""


class UnreadableEventFile(BadEventError):
    """An event file that is not readable Parquet: truncated, corrupted, or another format."""


@dataclass
class BadRowReport:
    """Bad rows skipped per file, with a few example reasons for the user."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@ray.remote(num_cpus=0)
class BadRowTally:
    """Collects skip counts from reader tasks (tasks cannot return side channels otherwise)."""

    def __init__(self) -> None:
        self.report = BadRowReport()

    def add(self, path: str, count: int, examples: list[str]) -> None:
        self.report.counts[path] = self.report.counts.get(path, 0) + count
        self.report.examples.extend(examples[: max(0, 10 - len(self.report.examples))])

    def get(self) -> BadRowReport:
        return self.report


def event_files(data_dir: str) -> list[str]:
    """The Parquet files of a canonical dataset (``DIR/events/``), or of a plain folder/file."""
    return [stat.path for stat in event_file_stats(data_dir)]


def event_file_stats(data_dir: str) -> list[storage.FileStat]:
    """:func:`event_files` with sizes and mtimes: what a dataset records of what it took."""
    events_dir = storage.join(data_dir, schema.EVENTS_DIR)
    root = events_dir if storage.exists(events_dir) else data_dir
    stats = storage.list_file_stats(root, ".parquet")
    if not stats:
        raise MissingInputError(f"{root}: no .parquet event files found")
    return stats


def read_footer(path: str) -> pq.FileMetaData:
    """An event file's Parquet footer; :class:`UnreadableEventFile` naming the file if it has
    none (a truncated upload, a CSV named ``.parquet``): Arrow's own message names no file."""
    try:
        with storage.open_input(path) as handle:
            return pq.ParquetFile(handle).metadata
    except pa.ArrowInvalid as error:
        raise UnreadableEventFile(f"{path}: not a readable Parquet file ({error})") from error


def readable(
    stats: list[storage.FileStat], on_bad_rows: str
) -> tuple[list[storage.FileStat], list[str], int]:
    """The files whose footer reads, (``skip``) the paths of those that do not, and the rows
    the readable ones hold (from the footers just read: what sizes the shuffle); with
    ``error`` the first unreadable file stops the job. A skipped file is not taken: once
    replaced by a whole one, the next ``prepare --append`` takes it."""
    good, unreadable, rows = [], [], 0
    for stat in stats:
        try:
            rows += read_footer(stat.path).num_rows
        except UnreadableEventFile as error:
            if on_bad_rows == "error":
                raise
            logger.warning("skipped: %s", error)
            unreadable.append(stat.path)
            continue
        good.append(stat)
    return good, unreadable, rows


def validated_batches(
    path: str, file_index: int, on_bad_rows: str, tally=None
) -> Iterator[pa.Table]:
    """Stream one event file as validated tables with :data:`ORDER`, a batch at a time.

    Bad rows raise :class:`BadEventError` naming file, row and field, or (``skip``) are
    dropped and counted in ``tally`` once the file is done.
    """
    if on_bad_rows == "skip" and tally is None:
        raise ValueError("on_bad_rows='skip' needs a BadRowTally to count what is skipped")
    skipped, examples, offset = 0, [], 0
    with storage.open_input(path) as handle:
        parquet = pq.ParquetFile(handle)
        batches = parquet.iter_batches(batch_size=READ_BATCH_ROWS)
        while (table := _next_table(batches, path, offset)) is not None:
            if isinstance(table, str):  # the rest of the file cannot be decoded
                if on_bad_rows == "error":
                    raise UnreadableEventFile(table)
                skipped += parquet.metadata.num_rows - offset
                examples = [*examples[:9], table]
                break
            good, bad_reasons = validate_events(table, path, offset)
            if bad_reasons and on_bad_rows == "error":
                raise BadEventError(bad_reasons[0])
            skipped += len(bad_reasons)
            examples.extend(bad_reasons[: 10 - len(examples)])
            yield _with_order(good.table, file_index, offset + good.rows)
            offset += table.num_rows
    if skipped:
        ray.get(tally.add.remote(path, skipped, examples))


def _next_table(batches: Iterator[pa.RecordBatch], path: str, offset: int) -> pa.Table | str | None:
    """The next batch as a table; None at the end; the reason, if the data cannot be decoded
    (a corrupted page: Arrow raises ArrowInvalid or, for a bad page header or compressed
    block, OSError). An object store's I/O error is raised as it is: it names no corruption,
    and the job (or its retries) must not skip good data for it."""
    try:
        batch = next(batches, None)
    except (pa.ArrowInvalid, OSError) as error:
        if "AWS Error" in str(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return f"{path}: unreadable Parquet after row {offset} ({first_line})"
    return None if batch is None else pa.Table.from_batches([batch])


@dataclass
class ValidatedRows:
    table: pa.Table  # normalised to EVENT_SCHEMA
    rows: np.ndarray  # row numbers (within the batch) of the rows kept


def validate_events(table: pa.Table, path: str, offset: int = 0) -> tuple[ValidatedRows, list[str]]:
    """Normalise one batch to :data:`schema.EVENT_SCHEMA`; return good rows and bad-row reasons.

    Row numbers in messages are 1-based data rows of the file (``offset`` rows came before).
    """
    missing = [c for c in schema.REQUIRED_EVENT_COLUMNS if c not in table.column_names]
    if missing:
        raise BadEventError(
            f"{path}: missing required field(s) {missing}; found columns {table.column_names}"
        )
    bad = np.zeros(table.num_rows, dtype=bool)
    reasons: dict[int, str] = {}
    columns = {}
    for target in schema.EVENT_SCHEMA:
        if target.name not in table.column_names:
            columns[target.name] = pa.nulls(table.num_rows, target.type)
            continue
        values, invalid = _convert_column(table.column(target.name), target)
        for row in np.flatnonzero(invalid & ~bad):
            reasons[row] = _reason(path, offset + row, target.name, table.column(target.name)[row])
        bad |= invalid
        columns[target.name] = values
    normalised = pa.table(columns, schema=_NULLABLE_EVENT_SCHEMA)
    keep = np.flatnonzero(~bad)
    if len(keep) < table.num_rows:  # copying a whole batch costs as much as validating it
        normalised = normalised.take(keep)
    good = normalised.cast(schema.EVENT_SCHEMA)
    return ValidatedRows(good, keep), [reasons[r] for r in sorted(reasons)]


def _reason(path: str, row: int, field_name: str, value: pa.Scalar) -> str:
    shown = "null" if not value.is_valid else repr(value.as_py())
    return f"{path} row {row + 1}: field '{field_name}': invalid value {shown}"


def _convert_column(column: pa.ChunkedArray, target: pa.Field) -> tuple[pa.Array, np.ndarray]:
    """Cast one column to the target type; return values (null where invalid) and invalid mask.

    A required field is invalid where null; an optional one only where a present value failed
    to convert. Non-finite numbers are invalid either way.
    """
    column = column.combine_chunks()
    if target.name == schema.TIMESTAMP:
        values = _timestamps_to_seconds(column)
    elif target.name in (schema.USER_ID, schema.ITEM_ID):
        values = _ids_to_string(column)
    else:
        values = _safe_cast(column, target.type)
    failed = _is_null(values) if not target.nullable else _is_null(values) & ~_is_null(column)
    if pa.types.is_floating(values.type):
        failed |= ~np.isfinite(pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False))
        values = pc.if_else(pa.array(failed), pa.scalar(None, values.type), values)
    return values, failed


def _is_null(values: pa.Array) -> np.ndarray:
    return pc.is_null(values).to_numpy(zero_copy_only=False).astype(bool)


def _ids_to_string(column: pa.Array) -> pa.Array:
    """Ids may be ints or strings; ints become their decimal string, empty strings are invalid."""
    if pa.types.is_floating(column.type):
        whole = pc.equal(pc.floor(column), column)
        as_int = pc.cast(column, pa.int64(), safe=False)
        column = pc.if_else(whole, as_int, pa.scalar(None, pa.int64()))
    values = _safe_cast(column, pa.string())
    empty = pc.equal(pc.binary_length(values), 0)
    if not pc.any(empty).as_py():
        return values
    return pc.if_else(empty, pa.scalar(None, pa.string()), values)


def _timestamps_to_seconds(column: pa.Array) -> pa.Array:
    if pa.types.is_timestamp(column.type):
        seconds = pc.cast(column, pa.timestamp("s"), safe=False)
        return pc.cast(seconds, pa.int64())
    if pa.types.is_floating(column.type):
        column = pc.floor(column)
    return _safe_cast(column, pa.int64())


def _safe_cast(column: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast element-wise; values that cannot be cast become null instead of failing the batch."""
    try:
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([_cast_one(v, target) for v in column.to_pylist()], type=target)


def _cast_one(value, target: pa.DataType):
    try:
        return pa.scalar(value).cast(target).as_py() if value is not None else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        return None


def _with_order(table: pa.Table, file_index: int, rows: np.ndarray) -> pa.Table:
    order = (np.int64(file_index) << _ROW_BITS) + rows.astype(np.int64)
    return table.append_column(ORDER, pa.array(order, type=pa.int64()))
