"""``prepare``: a canonical event log → the training/validation/test sequence dataset.

Runs on Ray Data and reads the raw log once. Output (local or ``s3://``)::

    OUTPUT/users/        one file per hash bucket, one row per user: time-ordered raw item
                         ids, timestamps and event types (the most recent ``max_history``)
    OUTPUT/vocab.parquet the item vocabulary (ids → indices, counts)
    OUTPUT/train/        training windows (item indices), at most ``max_len`` long
    OUTPUT/valid/        history + target per user, for model selection
    OUTPUT/test/         history + target per user, reported once
    OUTPUT/manifest.json counts, vocabulary size, data hash, split and cut times, input files

Grouping by user is :mod:`recsys_dist.data.grouping` (hash buckets, bounded memory). With
``append=True`` new log partitions are merged into an existing dataset: the old raw files are
not read again (their events live on in ``users/``), the vocabulary only grows, and every
split is rebuilt. Results are written under ``OUTPUT/_next`` and moved into place at the end,
so a failed run leaves the previous dataset intact and a retried task cannot double-count.

Nothing here collects the log on the driver: only per-item counts (the vocabulary), a
fixed-size histogram of event times and per-file bad-row counts come back to it.
"""

from __future__ import annotations

import dataclasses
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
from recsys_dist.data.sequences import SplitSpec, evaluation_rows, time_cuts, training_rows
from recsys_dist.data.vocab import Vocabulary

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 2
_TIME_BINS = 65_536
NEXT_DIR = "_next"  # the dataset being built; moved into place when complete
SCRATCH_DIR = "_buckets"  # bucket parts of the scatter step; deleted when done
_PUBLISHED = (schema.USERS_DIR, *schema.SPLITS, schema.VOCAB_FILE)
# Settings an appended partition must share with the dataset it joins.
_FIXED_ON_APPEND = (
    "max_len",
    "max_history",
    "split",
    "valid_fraction",
    "test_fraction",
    "min_user_events",
    "dedup",
    "window_stride",
)


class AppendError(ValueError):
    """An incremental ``prepare`` that would break the existing dataset."""


def prepare_dataset(
    data_dir: str, output_dir: str, config: DataConfig, append: bool = False
) -> dict[str, Any]:
    """Validate, de-duplicate, group, index and split ``data_dir``; return the manifest.

    With ``append``, ``data_dir`` holds new files for the dataset already in ``output_dir``.
    """
    started = time.perf_counter()
    files = events_io.event_files(data_dir)
    previous = _check_append(output_dir, files, config) if append else None
    logger.info("preparing %d event file(s) from %s", len(files), data_dir)
    spec = _grouping_spec(files, config, previous)
    next_dir, scratch = storage.join(output_dir, NEXT_DIR), storage.join(output_dir, SCRATCH_DIR)
    for leftover in (next_dir, scratch):
        storage.delete_dir(leftover)
    tally = events_io.BadRowTally.remote() if config.on_bad_rows == "skip" else None
    first_file = len(previous["input_files"]) if previous else 0
    accepted = grouping.scatter(
        files, first_file, scratch, spec.num_buckets, config.on_bad_rows, tally
    )
    users_dir = storage.join(next_dir, schema.USERS_DIR)
    earlier = storage.join(output_dir, schema.USERS_DIR) if previous else None
    gathered = _gather(scratch, earlier, users_dir, spec)
    vocab = _vocabulary(gathered.item_counts, output_dir if previous else None)
    vocab.save(storage.join(next_dir, schema.VOCAB_FILE))
    users = storage.read_parquet_dataset(users_dir)
    split = _split_spec(users, config)
    for name in schema.SPLITS:
        storage.make_dirs(storage.join(next_dir, name))
    totals = _write_splits(users, split, vocab, next_dir)
    _check_nothing_lost(accepted, totals, previous)
    _publish(next_dir, output_dir)
    storage.delete_dir(scratch)
    manifest = _manifest(data_dir, files, config, vocab, split, totals, tally, accepted, previous)
    manifest.update(num_buckets=spec.num_buckets, skewed_users=gathered.skewed)
    manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
    storage.write_json(storage.join(output_dir, schema.MANIFEST_FILE), manifest)
    return manifest


def load_manifest(prepared_dir: str) -> dict[str, Any]:
    path = storage.join(prepared_dir, schema.MANIFEST_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{prepared_dir}: not a prepared dataset (no {schema.MANIFEST_FILE})"
        )
    return storage.read_json(path)


def _check_append(output_dir: str, files: list[str], config: DataConfig) -> dict[str, Any]:
    """The existing manifest, after checking the new files and settings fit it."""
    previous = load_manifest(output_dir)
    if previous.get("format_version") != MANIFEST_VERSION:
        raise AppendError(f"{output_dir}: prepared by an older version; prepare it again whole")
    seen = set(previous["input_files"]).intersection(files)
    if seen:
        raise AppendError(
            f"{len(seen)} file(s) were already prepared into {output_dir}, e.g. {sorted(seen)[0]}"
        )
    stored = previous["config"]
    changed = [k for k in _FIXED_ON_APPEND if stored[k] != getattr(config, k)]
    if changed:
        details = ", ".join(f"data.{k}: {stored[k]!r} → {getattr(config, k)!r}" for k in changed)
        raise AppendError(f"appending must keep the dataset's settings; changed {details}")
    return previous


def _grouping_spec(files: list[str], config: DataConfig, previous) -> grouping.GroupingSpec:
    """Buckets sized from Parquet footers (no data read); fixed once a dataset exists."""
    spec = grouping.spec_for(files, config.bucket_rows, config.max_history, config.dedup)
    return dataclasses.replace(spec, num_buckets=previous["num_buckets"]) if previous else spec


@dataclasses.dataclass
class _Gathered:
    item_counts: pa.Table
    skewed: list[dict[str, Any]]


def _gather(scratch: str, earlier: str | None, users_dir: str, spec) -> _Gathered:
    """One task per bucket builds its users file; item counts and skewed users come back."""
    results = grouping.gather(scratch, spec, earlier, users_dir, summarize=_bucket_summary)
    counts = pa.table(
        {schema.ITEM_ID: pa.array([], pa.string()), schema.COUNT: pa.array([], pa.int64())}
    )
    skewed: list[dict[str, Any]] = []
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in range(batch.num_rows):
            bucket_counts = pa.table(
                {
                    schema.ITEM_ID: batch.column(schema.ITEM_ID)[row].values,
                    schema.COUNT: batch.column(schema.COUNT)[row].values,
                }
            )
            counts = _add_counts(counts, bucket_counts)
            skewed.extend(json.loads(batch.column("skewed")[row].as_py()))
    skewed.sort(key=lambda user: -user["events"])
    if skewed:
        logger.warning(
            "%d user(s) had more than data.max_history events and were cut to their most "
            "recent ones, e.g. %s",
            len(skewed),
            skewed[0],
        )
    return _Gathered(counts, skewed[: grouping.SKEWED_USERS_REPORTED])


def _bucket_summary(users: pa.Table) -> pa.Table:
    """What the driver needs of a bucket: its item counts and its cut (skewed) users."""
    counts = _item_counts(users)
    return pa.table(
        {
            schema.ITEM_ID: _as_one_list(counts.column(schema.ITEM_ID)),
            schema.COUNT: _as_one_list(counts.column(schema.COUNT)),
            "skewed": [json.dumps(list(grouping.iter_skewed(users)))],
        }
    )


def _as_one_list(column: pa.ChunkedArray) -> pa.ListArray:
    values = column.combine_chunks()
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def _add_counts(total: pa.Table, more: pa.Table) -> pa.Table:
    summed = (
        pa.concat_tables([total, more]).group_by(schema.ITEM_ID).aggregate([(schema.COUNT, "sum")])
    )
    summed = summed.rename_columns([n.removesuffix("_sum") for n in summed.column_names])
    return summed.select([schema.ITEM_ID, schema.COUNT])


def _vocabulary(counts: pa.Table, existing_dir: str | None) -> Vocabulary:
    """Fresh: most frequent first. Appending: old indices kept, new items appended."""
    if counts.num_rows == 0:
        raise ValueError("no events left after validation and filtering: nothing to prepare")
    ids = counts.column(schema.ITEM_ID).combine_chunks()
    values = counts.column(schema.COUNT).to_numpy()
    if existing_dir is None:
        return Vocabulary.from_counts(ids, values)
    return Vocabulary.load(storage.join(existing_dir, schema.VOCAB_FILE)).recount(ids, values)


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
    for name in _PUBLISHED:
        _, target = storage.resolve(storage.join(output_dir, name))
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)
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


def _item_counts(users: pa.Table) -> pa.Table:
    items = pc.list_flatten(users.column(schema.ITEM_IDS))
    values, counts = pc.value_counts(items).flatten()
    return pa.table({schema.ITEM_ID: values, schema.COUNT: pc.cast(counts, pa.int64())})


def _index_items(users: pa.Table, vocab_ref) -> pa.Table:
    """Replace raw item ids by vocabulary indices (every kept item is in the vocabulary)."""
    vocab = Vocabulary(ray.get(vocab_ref), np.empty(0, np.int64))
    lists = users.column(schema.ITEM_IDS).combine_chunks()
    indices = vocab.to_indices(lists.flatten()).astype(np.int32)
    as_lists = pa.ListArray.from_arrays(lists.offsets, pa.array(indices))
    return users.drop_columns([schema.ITEM_IDS]).append_column(schema.ITEMS, as_lists)


def _split_spec(users: ray.data.Dataset, config: DataConfig) -> SplitSpec:
    spec = SplitSpec(config.split, config.max_len, config.window_stride, config.min_user_events)
    if config.split == "loo":
        return spec
    low, high = (
        users.map_batches(_time_range, batch_format="pyarrow")
        .aggregate(ray.data.aggregate.Min("low"), ray.data.aggregate.Max("high"))
        .values()
    )
    edges = np.linspace(low, high + 1, _TIME_BINS + 1)
    histogram = np.zeros(_TIME_BINS, np.int64)
    for batch in users.map_batches(
        _time_histogram, batch_format="pyarrow", fn_kwargs={"edges": edges}
    ).iter_batches(batch_size=None, batch_format="numpy"):
        histogram += np.asarray(batch["histogram"].tolist(), np.int64).sum(axis=0)
    valid_cut, test_cut = time_cuts(histogram, edges, config.valid_fraction, config.test_fraction)
    return dataclasses.replace(spec, valid_cut=valid_cut, test_cut=test_cut)


def _time_range(users: pa.Table) -> pa.Table:
    times = pc.list_flatten(users.column(schema.TIMESTAMPS))
    bounds = pc.min_max(times)
    return pa.table({"low": [bounds["min"].as_py()], "high": [bounds["max"].as_py()]})


def _time_histogram(users: pa.Table, edges: np.ndarray) -> pa.Table:
    times = pc.list_flatten(users.column(schema.TIMESTAMPS)).to_numpy()
    histogram, _ = np.histogram(times, bins=edges)
    return pa.table({"histogram": [histogram]})


def _write_splits(
    users: ray.data.Dataset, spec: SplitSpec, vocab: Vocabulary, output_dir: str
) -> dict[str, int]:
    """One pass over ``users/``: index items, write train/valid/test parts, sum the counts."""
    stats = users.map_batches(
        _write_split_parts,
        batch_format="pyarrow",
        fn_kwargs={"spec": spec, "vocab_ref": ray.put(vocab.item_ids), "output_dir": output_dir},
    )
    totals: dict[str, int] = {}
    for batch in stats.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name in batch.column_names:
            totals[name] = totals.get(name, 0) + int(pc.sum(batch.column(name)).as_py() or 0)
    return totals


def _write_split_parts(users: pa.Table, spec: SplitSpec, vocab_ref, output_dir: str) -> pa.Table:
    """Write this block's rows of every split; return its counts as one row.

    Part names derive from the block's content, so a retried task overwrites its own parts
    instead of adding duplicates.
    """
    indexed = _index_items(users, vocab_ref)
    part = hashlib.sha1(f"{users.column(schema.USER_ID)[0]}:{users.num_rows}".encode()).hexdigest()
    counts = {}
    for split, table in (
        (schema.TRAIN_SPLIT, training_rows(indexed, spec)),
        (schema.VALID_SPLIT, evaluation_rows(indexed, spec, schema.VALID_SPLIT)),
        (schema.TEST_SPLIT, evaluation_rows(indexed, spec, schema.TEST_SPLIT)),
    ):
        counts[f"{split}_rows"] = table.num_rows
        if table.num_rows:
            path = storage.join(output_dir, split, f"part-{part[:16]}.parquet")
            storage.write_parquet(table, path, dictionary=[schema.USER_ID])
    lengths = pc.list_value_length(users.column(schema.ITEM_IDS)).to_numpy()
    return pa.table(
        {
            **{name: [value] for name, value in counts.items()},
            "events": [int(pc.sum(users.column(schema.NUM_EVENTS)).as_py())],
            "duplicates": [int(pc.sum(users.column(schema.NUM_DUPLICATES)).as_py())],
            "truncated": [int(pc.sum(users.column(schema.NUM_TRUNCATED)).as_py())],
            "users": [int((lengths >= spec.min_user_events).sum())],
            "users_below_min_events": [int((lengths < spec.min_user_events).sum())],
        }
    )


def _manifest(
    data_dir, files, config, vocab, spec, totals, tally, accepted, previous
) -> dict[str, Any]:
    """Counts cover the whole dataset (every appended source); ``sources`` lists each one."""
    bad = ray.get(tally.get.remote()) if tally is not None else events_io.BadRowReport()
    earlier_bad = previous["bad_rows"] if previous else {"per_file": {}, "examples": []}
    new_hash = data_hash(files)
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


def data_hash(files: list[str]) -> str:
    """A fingerprint of the input: names, sizes and Parquet footers (row counts, statistics)."""
    digest = hashlib.sha256()
    for path in files:
        with storage.open_input(path) as handle:
            meta = pq.ParquetFile(handle).metadata
            digest.update(f"{path.rsplit('/', 1)[-1]}:{handle.size()}:{meta.num_rows}".encode())
            digest.update(str(meta.schema).encode())
            for group in range(meta.num_row_groups):
                digest.update(str(meta.row_group(group).to_dict()).encode())
    return digest.hexdigest()
