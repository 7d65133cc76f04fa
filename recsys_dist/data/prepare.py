"""``prepare``: a canonical event log → the per-user sequence dataset that training reads.

Runs on Ray Data and reads the raw log once. Output (local or ``s3://``)::

    OUTPUT/users/        one file per hash bucket, one row per user: time-ordered item indices,
                         timestamps and event types (the most recent ``max_history``)
    OUTPUT/vocab.parquet the item vocabulary (ids → indices, counts)
    OUTPUT/manifest.json counts, vocabulary size, data hash, split and cut times, input files

The training windows and the validation and test rows are not stored: they are cut from
``users/`` as they are read (:mod:`recsys_dist.data.prepared`), with the split protocol and
cut times recorded here.

Two passes over the data, both :mod:`recsys_dist.data.grouping`'s: the **scatter** validates
every file, writes its events into hash buckets and counts items and event times on the way;
from those counts the driver fixes the vocabulary and (time split) the cut times; the
**gather** then builds each bucket's users with item indices and counts their split rows.
With ``append=True`` new log partitions are merged into an existing dataset: the old raw
files are not read again (their events live on in ``users/``), the vocabulary only grows.
The manifest records every file it has taken (``consumed``: path, size, mtime and a
fingerprint of its Parquet footer), so an append over a folder that keeps growing (the
service's event log) takes exactly the files not taken before, however often it runs; with
none new it changes nothing and says so. A taken file that was rewritten since (another
size, or another footer) is refused: its events would be counted twice or lost.
Results are written under ``OUTPUT/_next`` and moved into place at the end, so a failed run
leaves the previous dataset intact and a retried task cannot double-count.

Nothing here collects the log on the driver: only per-item counts, a fixed-size histogram of
event times, per-bucket counts and per-file bad-row counts come back to it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.config import DataConfig
from recsys_dist.data import events as events_io
from recsys_dist.data import grouping
from recsys_dist.data.prepared import load_manifest
from recsys_dist.data.sequences import SplitSpec, TimeHistogram, split_counts
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import UserInputError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 3
NEXT_DIR = "_next"  # the dataset being built; moved into place when complete
SCRATCH_DIR = "_buckets"  # bucket parts of the scatter step; deleted when done
_PUBLISHED = (schema.USERS_DIR, schema.VOCAB_FILE)
_RETIRED = schema.SPLITS  # materialised splits of format 2, removed when a dataset is rebuilt
# Settings an appended partition must share with the dataset it joins.
_FIXED_ON_APPEND = (
    "max_len",
    "max_history",
    "split",
    "holdout_events",
    "valid_fraction",
    "test_fraction",
    "min_user_events",
    "dedup",
    "window_stride",
)


class AppendError(UserInputError):
    """An incremental ``prepare`` that would break the existing dataset."""


def prepare_dataset(
    data_dir: str, output_dir: str, config: DataConfig, append: bool = False
) -> dict[str, Any]:
    """Validate, de-duplicate, group and index ``data_dir``; return the manifest.

    With ``append``, ``data_dir`` holds new files for the dataset already in ``output_dir``.
    """
    started = time.perf_counter()
    stats = events_io.event_file_stats(data_dir)
    previous, already_taken = None, 0
    if append:
        previous = _check_append(output_dir, config)
        stats, already_taken = _not_yet_consumed(previous, stats, output_dir)
        if not stats:
            logger.info("nothing new in %s: all %d file(s) taken before", data_dir, already_taken)
            return {**previous, "taken": {"files": 0, "already_taken": already_taken}}
    stats, unreadable, rows = events_io.readable(stats, config.on_bad_rows)
    if not stats:
        raise events_io.UnreadableEventFile(
            f"{data_dir}: none of the {len(unreadable)} new event file(s) is readable Parquet"
        )
    files = [stat.path for stat in stats]
    logger.info("preparing %d event file(s) from %s", len(files), data_dir)
    spec = _grouping_spec(rows, config, previous)
    next_dir, scratch = storage.join(output_dir, NEXT_DIR), storage.join(output_dir, SCRATCH_DIR)
    for leftover in (next_dir, scratch):
        storage.delete_dir(leftover)
    tally = events_io.BadRowTally.remote() if config.on_bad_rows == "skip" else None
    first_file = len(previous["input_files"]) if previous else 0
    scanned = _scan(files, first_file, scratch, spec.num_buckets, config.on_bad_rows, tally)
    vocab = _vocabulary(scanned.item_counts, output_dir if previous else None)
    times = scanned.times
    if previous:
        times = TimeHistogram.from_dict(previous["time_histogram"]).merge(times)
    split = _split_spec(config, times)
    users_dir = storage.join(next_dir, schema.USERS_DIR)
    earlier = storage.join(output_dir, schema.USERS_DIR) if previous else None
    gathered = _gather(scratch, earlier, users_dir, spec, split, vocab)
    vocab = dataclasses.replace(vocab, counts=gathered.item_counts)
    vocab.save(storage.join(next_dir, schema.VOCAB_FILE))
    _check_nothing_lost(scanned.accepted, gathered.totals, previous)
    _publish(next_dir, output_dir)
    storage.delete_dir(scratch)
    manifest = _manifest(
        data_dir, stats, config, vocab, split, gathered.totals, tally, scanned.accepted, previous
    )
    manifest["bad_rows"]["unreadable_files"] = _still_unreadable(previous, files, unreadable)
    manifest["counts"]["files_skipped"] = len(manifest["bad_rows"]["unreadable_files"])
    manifest.update(
        taken={"files": len(files), "already_taken": already_taken},
        num_buckets=spec.num_buckets,
        skewed_users=gathered.skewed,
        time_histogram=times.to_dict(),
        ratings=gathered.ratings,
        prepare_seconds=round(time.perf_counter() - started, 3),
    )
    storage.write_json(storage.join(output_dir, schema.MANIFEST_FILE), manifest)
    return manifest


def _still_unreadable(previous, taken: list[str], unreadable: list[str]) -> list[str]:
    """Files skipped as unreadable and not taken since (a replaced file is taken once whole)."""
    earlier = previous["bad_rows"].get("unreadable_files", []) if previous else []
    return sorted((set(earlier) - set(taken)) | set(unreadable))


def _check_append(output_dir: str, config: DataConfig) -> dict[str, Any]:
    """The existing manifest, after checking the settings fit it."""
    previous = load_manifest(output_dir)
    if previous.get("format_version") != MANIFEST_VERSION:
        raise AppendError(f"{output_dir}: prepared by an older version; prepare it again whole")
    stored = previous["config"]
    stored = {**dataclasses.asdict(DataConfig()), **stored}  # settings newer than the dataset
    changed = [k for k in _FIXED_ON_APPEND if stored[k] != getattr(config, k)]
    if changed:
        details = ", ".join(f"data.{k}: {stored[k]!r} → {getattr(config, k)!r}" for k in changed)
        raise AppendError(f"appending must keep the dataset's settings; changed {details}")
    return previous


def _not_yet_consumed(
    previous: dict[str, Any], stats: list[storage.FileStat], output_dir: str
) -> tuple[list[storage.FileStat], int]:
    """The files the dataset has not taken, and how many it had; refuses a taken file that
    was rewritten since. Same size and mtime: the same file. Same size, another mtime (a copy,
    a sync tool): the same if its footer fingerprint is. Another size: rewritten."""
    consumed = _consumed(previous)
    new, taken = [], 0
    for stat in stats:
        record = consumed.get(stat.path, "absent")
        if record == "absent":
            new.append(stat)
            continue
        taken += 1
        if record is None or (record["size"], record["mtime_ns"]) == (stat.size, stat.mtime_ns):
            continue  # a dataset from before sizes were recorded: taken by name
        if record["size"] != stat.size or file_fingerprint(stat.path) != record["fingerprint"]:
            raise AppendError(
                f"{stat.path} was prepared into {output_dir} and has changed since (size "
                f"{record['size']} -> {stat.size}); a log file must not be rewritten once "
                "taken: write new events to a new file"
            )
    return new, taken


def _consumed(manifest: dict[str, Any]) -> dict[str, dict | None]:
    """Every file the dataset took, by path (``None``: taken before sizes were recorded)."""
    recorded = manifest.get("consumed", {})
    return {path: recorded.get(path) for path in manifest["input_files"]}


def _grouping_spec(rows: int, config: DataConfig, previous) -> grouping.GroupingSpec:
    """Buckets sized from Parquet footers (no data read); fixed once a dataset exists."""
    spec = grouping.spec_for(rows, config.bucket_rows, config.max_history, config.dedup)
    return dataclasses.replace(spec, num_buckets=previous["num_buckets"]) if previous else spec


class _FileScan:
    """What the scatter learns of one file on the way: item counts and event times."""

    def __init__(self) -> None:
        self.counts: list[pa.Table] = []
        self.times = TimeHistogram.empty()

    def add(self, events: pa.Table) -> None:
        values, counts = pc.value_counts(events.column(schema.ITEM_ID).combine_chunks()).flatten()
        self.counts.append(
            pa.table({schema.ITEM_ID: values, schema.COUNT: pc.cast(counts, pa.int64())})
        )
        self.times = self.times.merge(TimeHistogram.of(events.column(schema.TIMESTAMP).to_numpy()))

    def result(self) -> pa.Table:
        counts = _sum_counts(self.counts)
        return pa.table(
            {
                schema.ITEM_ID: _as_one_list(counts.column(schema.ITEM_ID)),
                schema.COUNT: _as_one_list(counts.column(schema.COUNT)),
                "times": [json.dumps(self.times.to_dict())],
            }
        )


@dataclasses.dataclass
class _Scanned:
    accepted: int
    item_counts: pa.Table  # item_id, count: accepted events per item
    times: TimeHistogram  # of the accepted events


def _scan(files, first_file: int, scratch: str, num_buckets: int, on_bad_rows, tally) -> _Scanned:
    """The scatter, which also counts every file's items and event times."""
    per_file = grouping.scatter(
        files, first_file, scratch, num_buckets, on_bad_rows, tally, summarize=_FileScan
    )
    counts, times, accepted = [], TimeHistogram.empty(), 0
    for batch in per_file:
        for row in range(batch.num_rows):
            counts.append(
                pa.table(
                    {
                        schema.ITEM_ID: batch.column(schema.ITEM_ID)[row].values,
                        schema.COUNT: batch.column(schema.COUNT)[row].values,
                    }
                )
            )
            times = times.merge(TimeHistogram.from_dict(json.loads(batch["times"][row].as_py())))
            accepted += batch["events"][row].as_py()
    return _Scanned(accepted, _sum_counts(counts), times)


def _sum_counts(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table(
            {schema.ITEM_ID: pa.array([], pa.string()), schema.COUNT: pa.array([], pa.int64())}
        )
    summed = (
        pa.concat_tables(tables)
        .group_by(schema.ITEM_ID, use_threads=False)
        .aggregate([(schema.COUNT, "sum")])
    )
    return summed.rename_columns([schema.ITEM_ID, schema.COUNT])


def _as_one_list(column: pa.ChunkedArray) -> pa.ListArray:
    values = column.combine_chunks()
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def _vocabulary(counts: pa.Table, existing_dir: str | None) -> Vocabulary:
    """Fresh: most frequent first. Appending: old indices kept, new items appended."""
    if counts.num_rows == 0:
        raise UserInputError("no events left after validation and filtering: nothing to prepare")
    ids = counts.column(schema.ITEM_ID).combine_chunks()
    values = counts.column(schema.COUNT).to_numpy()
    if existing_dir is None:
        return Vocabulary.from_counts(ids, values)
    return Vocabulary.load(storage.join(existing_dir, schema.VOCAB_FILE)).extend(ids, values)


def _split_spec(config: DataConfig, times: TimeHistogram) -> SplitSpec:
    spec = SplitSpec(
        config.split,
        config.max_len,
        config.window_stride,
        config.min_user_events,
        holdout_events=config.holdout_events,
    )
    if config.split == "loo":
        return spec
    valid_cut, test_cut = times.cuts(config.valid_fraction, config.test_fraction)
    return dataclasses.replace(spec, valid_cut=valid_cut, test_cut=test_cut)


@dataclasses.dataclass
class _Gathered:
    item_counts: np.ndarray  # per vocabulary position: events kept in users' sequences
    totals: dict[str, int]
    skewed: list[dict[str, Any]]
    ratings: dict[str, float] | None  # the rating scale (:func:`_rating_scale`)


_TOTALS = ("events", "duplicates", "truncated", "users", "users_below_min_events")


def _gather(scratch, earlier, users_dir: str, spec, split: SplitSpec, vocab) -> _Gathered:
    """One task per bucket writes its users; item counts, split rows and cut users come back."""
    results = grouping.gather(
        scratch,
        spec,
        users_dir,
        earlier,
        summarize=functools.partial(_bucket_summary, split=split),
        vocabulary=ray.put(vocab),
    )
    item_counts = np.zeros(vocab.size, np.int64)
    totals = dict.fromkeys([*_TOTALS, *(f"{s}_rows" for s in schema.SPLITS)], 0)
    skewed: list[dict[str, Any]] = []
    summaries = []
    for batch in results:
        summaries.append(batch.select(["rated_events", "rating_sum", "rating_min", "rating_max"]))
        for row in range(batch.num_rows):
            indices = batch.column(schema.INDEX)[row].values.to_numpy()
            item_counts[indices] += batch.column(schema.COUNT)[row].values.to_numpy()
            skewed.extend(json.loads(batch.column("skewed")[row].as_py()))
        for name in totals:
            totals[name] += int(pc.sum(batch.column(name)).as_py())
    skewed.sort(key=lambda user: -user["events"])
    if skewed:
        logger.warning(
            "%d user(s) had more than data.max_history events and were cut to their most "
            "recent ones, e.g. %s",
            len(skewed),
            skewed[0],
        )
    counts = item_counts[schema.NUM_SPECIAL_TOKENS :]
    ratings = _rating_scale(summaries) if summaries else None
    return _Gathered(counts, totals, skewed[: grouping.SKEWED_USERS_REPORTED], ratings)


def _bucket_summary(users: pa.Table, split: SplitSpec) -> pa.Table:
    """What the driver needs of a bucket: kept item counts, split row counts, cut users."""
    items = pc.list_flatten(users.column(schema.ITEMS)).to_numpy()
    per_index = np.bincount(items)
    indices = np.flatnonzero(per_index)
    counts = per_index[indices]
    lengths = pc.list_value_length(users.column(schema.ITEMS)).to_numpy()
    rows = split_counts(users, split)
    return pa.table(
        {
            schema.INDEX: _as_one_list(pa.chunked_array([pa.array(indices, pa.int64())])),
            schema.COUNT: _as_one_list(pa.chunked_array([pa.array(counts, pa.int64())])),
            "skewed": [json.dumps(list(grouping.iter_skewed(users)))],
            "events": [int(pc.sum(users.column(schema.NUM_EVENTS)).as_py() or 0)],
            "duplicates": [int(pc.sum(users.column(schema.NUM_DUPLICATES)).as_py() or 0)],
            "truncated": [int(pc.sum(users.column(schema.NUM_TRUNCATED)).as_py() or 0)],
            "users": [int((lengths >= split.min_user_events).sum())],
            "users_below_min_events": [int((lengths < split.min_user_events).sum())],
            **{f"{name}_rows": [count] for name, count in rows.items()},
            **_rating_sums(users),
        }
    )


def _rating_sums(users: pa.Table) -> dict[str, list[float]]:
    """A bucket's rated events, their sum, min and max (NaN min/max where it has none)."""
    ratings = pc.list_flatten(users.column(schema.RATINGS)).to_numpy(zero_copy_only=False)
    rated = ratings[~np.isnan(ratings)].astype(np.float64)
    empty = not len(rated)
    return {
        "rated_events": [len(rated)],
        "rating_sum": [float(rated.sum())],
        "rating_min": [np.nan if empty else float(rated.min())],
        "rating_max": [np.nan if empty else float(rated.max())],
    }


def _rating_scale(batches: list[pa.Table]) -> dict[str, float] | None:
    """The dataset's rating scale, from every bucket's sums (``None``: nothing is rated)."""
    table = pa.concat_tables(batches)
    events = int(pc.sum(table.column("rated_events")).as_py() or 0)
    if not events:
        return None
    return {
        "events": events,
        "min": float(np.nanmin(table.column("rating_min").to_numpy())),
        "max": float(np.nanmax(table.column("rating_max").to_numpy())),
        "mean": float(pc.sum(table.column("rating_sum")).as_py()) / events,
    }


def _check_nothing_lost(accepted: int, totals: dict[str, int], previous) -> None:
    """Every accepted event is in a user's sequence, a duplicate count or a truncation count."""
    before = previous["counts"]["events_accepted"] if previous else 0
    grouped = totals["events"] + totals["duplicates"]
    if grouped != before + accepted:
        raise RuntimeError(
            f"prepare accounted for {grouped} events but accepted {before + accepted}; "
            "the output was not published"
        )


def _publish(next_dir: str, output_dir: str) -> None:
    """Replace the dataset's files with the newly built ones."""
    fs, _ = storage.resolve(output_dir)
    for name in (*_PUBLISHED, *_RETIRED):
        _, target = storage.resolve(storage.join(output_dir, name))
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)
        if name in _PUBLISHED:
            _, source = storage.resolve(storage.join(next_dir, name))
            _move(fs, source, target)
    storage.delete_dir(next_dir)


def _move(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Rename locally; object stores move object by object (a server-side copy each)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(source, target)
        return
    if fs.get_file_info(source).type == pafs.FileType.File:
        fs.move(source, target)
        return
    fs.create_dir(target, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(source, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.move(info.path, target + info.path[len(source) :])


def _manifest(
    data_dir, stats, config, vocab, spec, totals, tally, accepted, previous
) -> dict[str, Any]:
    """Counts cover the whole dataset (every appended source); ``sources`` lists each one."""
    bad = ray.get(tally.get.remote()) if tally is not None else events_io.BadRowReport()
    earlier_bad = previous["bad_rows"] if previous else {"per_file": {}, "examples": []}
    files = [stat.path for stat in stats]
    footers = {path: _footer_text(path) for path in files}
    new_hash = _hash_of(footers.values())
    consumed = {
        stat.path: {
            "size": stat.size,
            "mtime_ns": stat.mtime_ns,
            "fingerprint": _hash_of([footers[stat.path]]),
        }
        for stat in stats
    }
    source = {
        "path": str(data_dir),
        "files": len(files),
        "data_hash": new_hash,
        "events_accepted": accepted,
        "bad_rows_skipped": bad.total,
    }
    counts = {
        "bad_rows_skipped": bad.total + (previous["counts"]["bad_rows_skipped"] if previous else 0),
        "events_accepted": totals["events"] + totals["duplicates"],
        "duplicates_dropped": totals["duplicates"],
        "events": totals["events"],
        "events_truncated": totals["truncated"],
        "users": totals["users"],
        "users_below_min_events": totals["users_below_min_events"],
        **{f"{s}_rows": totals.get(f"{s}_rows", 0) for s in schema.SPLITS},
    }
    input_files = (previous["input_files"] if previous else []) + list(files)
    return {
        "consumed": {**(previous.get("consumed", {}) if previous else {}), **consumed},
        "format_version": MANIFEST_VERSION,
        "sources": (previous["sources"] if previous else []) + [source],
        "input_files": input_files,
        "files": len(input_files),
        "split": spec.split,
        "max_len": config.max_len,
        "valid_cut": spec.valid_cut if spec.split == "time" else None,
        "test_cut": spec.test_cut if spec.split == "time" else None,
        "vocab_size": vocab.size,
        "num_items": vocab.num_items,
        "counts": counts,
        "bad_rows": {
            "per_file": {**earlier_bad["per_file"], **bad.counts},
            "examples": (earlier_bad["examples"] + bad.examples)[:10],
        },
        "data_hash": _chain_hash(previous["data_hash"], new_hash) if previous else new_hash,
        "config": config.__dict__,
    }


def _chain_hash(previous: str, new: str) -> str:
    return hashlib.sha256(f"{previous}+{new}".encode()).hexdigest()


def file_fingerprint(path: str) -> str:
    """One file's fingerprint (a source's data hash is that of its files' footers in order):
    a rewrite changes it."""
    return _hash_of([_footer_text(path)])


def _footer_text(path: str) -> bytes:
    """What identifies a Parquet file without reading its data: name, size, row count, schema
    and every row group's metadata (sizes, per-column statistics)."""
    with storage.open_input(path) as handle:
        meta = pq.ParquetFile(handle).metadata
        parts = [f"{path.rsplit('/', 1)[-1]}:{handle.size()}:{meta.num_rows}"]
        # The Arrow rendering: ``str(meta.schema)`` starts with the object's address.
        parts.append(meta.schema.to_arrow_schema().to_string())
        parts += [str(meta.row_group(group).to_dict()) for group in range(meta.num_row_groups)]
    return "".join(parts).encode()


def _hash_of(texts) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text)
    return digest.hexdigest()
