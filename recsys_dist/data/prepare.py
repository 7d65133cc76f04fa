"""``prepare``: a canonical event log → the training/validation/test sequence dataset.

Runs on Ray Data and reads the raw log once. Output (local or ``s3://``)::

    OUTPUT/users/        one row per user: time-ordered raw item ids and timestamps
    OUTPUT/vocab.parquet the item vocabulary (ids → indices, counts)
    OUTPUT/train/        training windows (item indices), at most ``max_len`` long
    OUTPUT/valid/        history + target per user, for model selection
    OUTPUT/test/         history + target per user, reported once
    OUTPUT/manifest.json counts, vocabulary size, data hash, split and cut times

Nothing here collects the log on the driver: only per-item counts (the vocabulary), a
fixed-size histogram of event times and per-file bad-row counts come back to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from recsys_dist.data.sequences import (
    SplitSpec,
    build_user_sequence,
    evaluation_rows,
    time_cuts,
    training_rows,
)
from recsys_dist.data.vocab import Vocabulary

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_TIME_BINS = 65_536


def prepare_dataset(data_dir: str, output_dir: str, config: DataConfig) -> dict[str, Any]:
    """Validate, de-duplicate, group, index and split ``data_dir``; return the manifest."""
    started = time.perf_counter()
    files = events_io.event_files(data_dir)
    logger.info("preparing %d event file(s) from %s", len(files), data_dir)
    _clear_previous_output(output_dir)
    tally = events_io.BadRowTally.remote() if config.on_bad_rows == "skip" else None
    users_dir = storage.join(output_dir, schema.USERS_DIR)
    events = events_io.read_events(files, config.on_bad_rows, tally)
    _group_users(events, config, users_dir, _partitions(files))
    users = ray.data.read_parquet(users_dir)
    vocab = count_items(users)
    vocab.save(storage.join(output_dir, schema.VOCAB_FILE))
    spec = _split_spec(users, config)
    for split in schema.SPLITS:
        storage.make_dirs(storage.join(output_dir, split))
    totals = _write_splits(users, spec, vocab, output_dir)
    manifest = _manifest(data_dir, files, config, vocab, spec, totals, tally)
    manifest["prepare_seconds"] = round(time.perf_counter() - started, 3)
    storage.write_json(storage.join(output_dir, schema.MANIFEST_FILE), manifest)
    return manifest


def _clear_previous_output(output_dir: str) -> None:
    """A prepared dataset is rebuilt whole: parts of an earlier run must not mix in."""
    fs, inner = storage.resolve(output_dir)
    fs.create_dir(inner, recursive=True)
    for name in (schema.USERS_DIR, *schema.SPLITS, schema.VOCAB_FILE, schema.MANIFEST_FILE):
        path = storage.join(output_dir, name)
        if storage.exists(path):
            logger.warning("replacing %s from an earlier prepare", path)
            _, target = storage.resolve(path)
            if fs.get_file_info(target).type == pafs.FileType.Directory:
                fs.delete_dir(target)
            else:
                fs.delete_file(target)


def load_manifest(prepared_dir: str) -> dict[str, Any]:
    path = storage.join(prepared_dir, schema.MANIFEST_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{prepared_dir}: not a prepared dataset (no {schema.MANIFEST_FILE})"
        )
    return storage.read_json(path)


def _group_users(
    events: ray.data.Dataset, config: DataConfig, users_dir: str, partitions: int
) -> None:
    """Shuffle events by user and build one time-ordered sequence row per user."""
    grouped = events.groupby(schema.USER_ID, num_partitions=partitions).map_groups(
        build_user_sequence,
        batch_format="pyarrow",
        fn_kwargs={"max_history": config.max_history, "dedup": config.dedup},
    )
    grouped.write_parquet(users_dir)


def _partitions(files: list[str]) -> int:
    """Shuffle partitions: one per ~32 MiB of compressed Parquet, at least one per CPU.

    Ray's default (200) costs seconds of task overhead on small data.
    """
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(cpus, storage.total_size(files) // (32 << 20))


def count_items(users: ray.data.Dataset) -> Vocabulary:
    """Item frequencies over all kept events → the vocabulary.

    Tasks count per block; the driver merges the partial counts as they stream in, so it
    holds one row per distinct item (never the log) and no shuffle is paid for.
    """
    merged = pa.table(
        {schema.ITEM_ID: pa.array([], pa.string()), schema.COUNT: pa.array([], pa.int64())}
    )
    for batch in users.map_batches(_item_counts, batch_format="pyarrow").iter_batches(
        batch_size=None, batch_format="pyarrow"
    ):
        both = pa.concat_tables([merged, batch])
        summed = both.group_by(schema.ITEM_ID).aggregate([(schema.COUNT, "sum")])
        merged = summed.rename_columns([schema.ITEM_ID, schema.COUNT]).select(
            [schema.ITEM_ID, schema.COUNT]
        )
    if merged.num_rows == 0:
        raise ValueError("no events left after validation and filtering: nothing to prepare")
    return Vocabulary.from_counts(
        merged.column(schema.ITEM_ID).combine_chunks(), merged.column(schema.COUNT).to_numpy()
    )


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
    batch = {
        name: indexed.column(name).to_numpy(zero_copy_only=False) for name in indexed.column_names
    }
    part = hashlib.sha1(f"{users.column(schema.USER_ID)[0]}:{users.num_rows}".encode()).hexdigest()[
        :16
    ]
    counts = {}
    for split, rows, table_schema in (
        (schema.TRAIN_SPLIT, training_rows(batch, spec), schema.SEQUENCE_SCHEMA),
        (
            schema.VALID_SPLIT,
            evaluation_rows(batch, spec, schema.VALID_SPLIT),
            schema.EVAL_SEQUENCE_SCHEMA,
        ),
        (
            schema.TEST_SPLIT,
            evaluation_rows(batch, spec, schema.TEST_SPLIT),
            schema.EVAL_SEQUENCE_SCHEMA,
        ),
    ):
        table = pa.table(rows, schema=table_schema)
        counts[f"{split}_rows"] = table.num_rows
        if table.num_rows:
            fs, inner = storage.resolve(storage.join(output_dir, split, f"part-{part}.parquet"))
            pq.write_table(table, inner, filesystem=fs)
    lengths = pc.list_value_length(users.column(schema.ITEM_IDS)).to_numpy()
    return pa.table(
        {
            **{name: [value] for name, value in counts.items()},
            "events": [int(pc.sum(users.column(schema.NUM_EVENTS)).as_py())],
            "duplicates": [int(pc.sum(users.column(schema.NUM_DUPLICATES)).as_py())],
            "users": [int((lengths >= spec.min_user_events).sum())],
            "users_below_min_events": [int((lengths < spec.min_user_events).sum())],
        }
    )


def _manifest(data_dir, files, config, vocab, spec, totals, tally) -> dict[str, Any]:
    bad = ray.get(tally.get.remote()) if tally is not None else events_io.BadRowReport()
    counts = {
        "bad_rows_skipped": bad.total,
        "events_accepted": totals["events"] + totals["duplicates"],
        "duplicates_dropped": totals["duplicates"],
        "events": totals["events"],
        "users": totals["users"],
        "users_below_min_events": totals["users_below_min_events"],
        **{f"{s}_rows": totals.get(f"{s}_rows", 0) for s in schema.SPLITS},
    }
    return {
        "format_version": MANIFEST_VERSION,
        "source": str(data_dir),
        "files": len(files),
        "split": spec.split,
        "max_len": config.max_len,
        "valid_cut": spec.valid_cut if spec.split == "time" else None,
        "test_cut": spec.test_cut if spec.split == "time" else None,
        "vocab_size": vocab.size,
        "num_items": vocab.num_items,
        "counts": counts,
        "bad_rows": {"per_file": bad.counts, "examples": bad.examples},
        "data_hash": data_hash(files),
        "config": config.__dict__,
    }


def data_hash(files: list[str]) -> str:
    """A fingerprint of the input: names, sizes and Parquet footers (row counts, statistics)."""
    digest = hashlib.sha256()
    for path in files:
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as handle:
            meta = pq.ParquetFile(handle).metadata
            digest.update(f"{path.rsplit('/', 1)[-1]}:{handle.size()}:{meta.num_rows}".encode())
            digest.update(str(meta.schema).encode())
            for group in range(meta.num_row_groups):
                digest.update(str(meta.row_group(group).to_dict()).encode())
    return digest.hexdigest()
