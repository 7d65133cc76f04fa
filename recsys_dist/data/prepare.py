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

import hashlib
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    storage.make_dirs(output_dir)
    tally = events_io.BadRowTally.remote() if config.on_bad_rows == "skip" else None
    users_dir = storage.join(output_dir, schema.USERS_DIR)
    events = events_io.read_events(files, config.on_bad_rows, tally)
    _group_users(events, config, users_dir, _partitions(files))
    users = ray.data.read_parquet(users_dir)
    vocab = count_items(users, _partitions(storage.list_files(users_dir, ".parquet")))
    vocab.save(storage.join(output_dir, schema.VOCAB_FILE))
    spec = _split_spec(users, config)
    indexed = users.map_batches(
        _index_items, batch_format="pyarrow", fn_kwargs={"vocab_ref": ray.put(vocab.item_ids)}
    )
    _write_splits(indexed, spec, output_dir)
    manifest = _manifest(data_dir, files, output_dir, config, vocab, spec, users, tally)
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


def count_items(users: ray.data.Dataset, partitions: int) -> Vocabulary:
    """Item frequencies over all kept events → the vocabulary (items-sized, not log-sized)."""
    counts = (
        users.map_batches(_item_counts, batch_format="pyarrow")
        .groupby(schema.ITEM_ID)
        .sum(schema.COUNT)
    )
    table = counts.to_arrow_refs()
    merged = pa.concat_tables(ray.get(table)) if table else None
    if merged is None or merged.num_rows == 0:
        raise ValueError("no events left after validation and filtering: nothing to prepare")
    return Vocabulary.from_counts(
        merged.column(schema.ITEM_ID).combine_chunks(),
        merged.column(f"sum({schema.COUNT})").to_numpy(),
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
    return SplitSpec(**{**spec.__dict__, "valid_cut": valid_cut, "test_cut": test_cut})


def _time_range(users: pa.Table) -> pa.Table:
    times = pc.list_flatten(users.column(schema.TIMESTAMPS))
    bounds = pc.min_max(times)
    return pa.table({"low": [bounds["min"].as_py()], "high": [bounds["max"].as_py()]})


def _time_histogram(users: pa.Table, edges: np.ndarray) -> pa.Table:
    times = pc.list_flatten(users.column(schema.TIMESTAMPS)).to_numpy()
    histogram, _ = np.histogram(times, bins=edges)
    return pa.table({"histogram": [histogram]})


def _write_splits(indexed: ray.data.Dataset, spec: SplitSpec, output_dir: str) -> None:
    train = indexed.map_batches(
        _as_table(training_rows, schema.SEQUENCE_SCHEMA),
        batch_format="numpy",
        fn_kwargs={"spec": spec},
    )
    train.write_parquet(storage.join(output_dir, schema.TRAIN_SPLIT))
    for which in (schema.VALID_SPLIT, schema.TEST_SPLIT):
        rows = indexed.map_batches(
            _as_table(evaluation_rows, schema.EVAL_SEQUENCE_SCHEMA),
            batch_format="numpy",
            fn_kwargs={"spec": spec, "which": which},
        )
        rows.write_parquet(storage.join(output_dir, which))


def _as_table(build, table_schema: pa.Schema):
    """Wrap a row builder so every batch comes out with the exact schema (also when empty)."""

    def build_table(batch: dict[str, np.ndarray], **kwargs) -> pa.Table:
        return pa.table(build(batch, **kwargs), schema=table_schema)

    return build_table


def _manifest(data_dir, files, output_dir, config, vocab, spec, users, tally) -> dict[str, Any]:
    bad = ray.get(tally.get.remote()) if tally is not None else events_io.BadRowReport()
    totals = users.map_batches(
        _user_totals, batch_format="pyarrow", fn_kwargs={"min_events": config.min_user_events}
    ).sum(["events", "duplicates", "kept_users", "short_users"])
    counts = {
        "bad_rows_skipped": bad.total,
        "events_accepted": int(totals["sum(events)"] + totals["sum(duplicates)"]),
        "duplicates_dropped": int(totals["sum(duplicates)"]),
        "events": int(totals["sum(events)"]),
        "users": int(totals["sum(kept_users)"]),
        "users_below_min_events": int(totals["sum(short_users)"]),
        **{f"{s}_rows": _count_rows(storage.join(output_dir, s)) for s in schema.SPLITS},
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


def _user_totals(users: pa.Table, min_events: int) -> pa.Table:
    lengths = pc.list_value_length(users.column(schema.ITEM_IDS)).to_numpy()
    return pa.table(
        {
            "events": [int(users.column(schema.NUM_EVENTS).to_numpy().sum())],
            "duplicates": [int(users.column(schema.NUM_DUPLICATES).to_numpy().sum())],
            "kept_users": [int((lengths >= min_events).sum())],
            "short_users": [int((lengths < min_events).sum())],
        }
    )


def _count_rows(directory: str) -> int:
    """Row count from Parquet footers alone (no data read)."""
    total = 0
    for path in storage.list_files(directory, ".parquet"):
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


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
