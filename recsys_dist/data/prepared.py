"""Reading a prepared dataset: its manifest, and its splits cut from ``users/`` as they stream.

``prepare`` stores each user's sequence once (``users/``, item indices). The training windows
and the validation and test rows are cut from it here, block by block inside Ray Data, with
the split protocol and cut times the manifest recorded. Cutting is array arithmetic over a
block and costs far less than reading the same rows stored five times over (windows of stride
10 repeat every event; evaluation rows repeat whole histories).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.data.grouping import user_buckets
from recsys_dist.data.sequences import SplitSpec, split_rows
from recsys_dist.data.vocab import Vocabulary

if TYPE_CHECKING:  # Ray Data costs a worker ~0.7 s to import; prepare's tasks never need it
    import ray.data

# What cutting needs of a user; the counters and event types stay on disk.
_SPLIT_COLUMNS = [schema.USER_ID, schema.ITEMS, schema.TIMESTAMPS]
# The replayed share is chosen in steps of 1 / this many users.
_REPLAY_BUCKETS = 10_000


def load_manifest(prepared_dir: str) -> dict[str, Any]:
    path = storage.join(prepared_dir, schema.MANIFEST_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{prepared_dir}: not a prepared dataset (no {schema.MANIFEST_FILE})"
        )
    return storage.read_json(path)


def split_spec(manifest: dict[str, Any]) -> SplitSpec:
    """The split protocol a dataset was prepared with."""
    config = manifest["config"]
    return SplitSpec(
        split=config["split"],
        max_len=config["max_len"],
        window_stride=config["window_stride"],
        min_user_events=config["min_user_events"],
        valid_cut=manifest["valid_cut"] or 0,
        test_cut=manifest["test_cut"] or 0,
        holdout_events=config.get("holdout_events", 1),  # manifests before the setting: 1
    )


def rating_scale(manifest: dict[str, Any]) -> dict[str, float] | None:
    """``{"events", "min", "max", "mean"}`` of the dataset's rated events, or ``None`` when no
    event carries a rating (or it was prepared before ratings were kept)."""
    ratings = manifest.get("ratings")
    return ratings if ratings and ratings["events"] else None


def user_columns(prepared_dir: str) -> list[str]:
    """What reading a user's sequence takes: id, item indices, times, and the ratings where
    the dataset has any (the counters and event types stay on disk)."""
    rated = rating_scale(load_manifest(prepared_dir)) is not None
    return [*_SPLIT_COLUMNS, schema.RATINGS] if rated else _SPLIT_COLUMNS


def read_users(prepared_dir: str) -> ray.data.Dataset:
    """A lazy Ray Dataset of the users' whole sequences (:func:`user_columns`)."""
    return storage.read_parquet_dataset(
        storage.join(prepared_dir, schema.USERS_DIR), columns=user_columns(prepared_dir)
    )


def read_split(
    prepared_dir: str,
    split: str,
    targets_after: int = 0,
    active_since: int = 0,
    replay: float = 1.0,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of ``split``'s rows (:data:`schema.SEQUENCE_SCHEMA`, plus the target
    for ``valid``/``test``), cut from ``users/`` in parallel as it is read; with
    ``targets_after``, only the valid/test rows whose held-out event is later than that; with
    ``active_since``, only the users :func:`recent_users` keeps (a fine-tuning turn's)."""
    if split not in schema.SPLITS:
        raise ValueError(f"split must be one of {schema.SPLITS}, got {split!r}")
    spec = split_spec(load_manifest(prepared_dir))
    users = read_users(prepared_dir)
    if active_since:
        users = users.map_batches(
            recent_users,
            batch_format="pyarrow",
            fn_kwargs={"since": active_since, "replay": replay},
        )
    rows = users.map_batches(
        split_rows, batch_format="pyarrow", fn_kwargs={"spec": spec, "which": split}
    )
    if targets_after and split != schema.TRAIN_SPLIT:
        rows = rows.map_batches(
            _targets_after, batch_format="pyarrow", fn_kwargs={"since": targets_after}
        )
    return rows


def stored_histories(
    prepared_dir: str,
) -> Iterator[tuple[str, list[str], list[int], list[float | None]]]:
    """Every user's stored history as raw item ids, times and ratings (``None``: unrated;
    an empty list when the dataset has no ratings), one bucket file at a time, so memory does
    not grow with the dataset: what the online store is seeded with."""
    vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
    columns = user_columns(prepared_dir)
    rated = schema.RATINGS in columns
    for path in storage.list_files(storage.join(prepared_dir, schema.USERS_DIR), ".parquet"):
        with storage.open_input(path) as handle:
            users = pq.read_table(handle, columns=columns)
        items = vocab.to_item_ids(pc.list_flatten(users.column(schema.ITEMS)).to_numpy())
        offsets = np.r_[0, np.cumsum(pc.list_value_length(users.column(schema.ITEMS)))]
        ids, times = items.to_pylist(), users.column(schema.TIMESTAMPS).to_pylist()
        ratings = users.column(schema.RATINGS).to_pylist() if rated else None
        for i, user in enumerate(users.column(schema.USER_ID).to_pylist()):
            mine = [None if r != r else r for r in ratings[i]] if ratings else []  # NaN: none
            yield user, ids[offsets[i] : offsets[i + 1]], times[i], mine


def recent_users(users: pa.Table, since: int, replay: float) -> pa.Table:
    """The users with an event after ``since``, plus a ``replay`` share of the others.

    What a retraining turn fine-tunes on: the new events are all in the first group, so an
    epoch costs what they do, not what the whole history does; the replayed share keeps the
    users who did nothing new in view, so the model does not forget them. Which of them is
    a fixed hash of the user id and ``since``: the same users in every epoch, on every
    worker and in a rerun (a worker's cached shard stays valid), other users next turn.
    """
    if users.num_rows == 0:
        return users
    times = users.column(schema.TIMESTAMPS).combine_chunks()
    ends = np.asarray(times.offsets, np.int64)[1:] - 1  # every stored user has an event
    last = np.asarray(times.values, np.int64)[ends]  # histories are in time order
    turn_and_user = pc.binary_join_element_wise(str(since), users.column(schema.USER_ID), ":")
    replayed = user_buckets(turn_and_user, _REPLAY_BUCKETS) < round(replay * _REPLAY_BUCKETS)
    keep = (last > since) | replayed
    return users.filter(pa.array(keep))


def _targets_after(rows: pa.Table, since: int) -> pa.Table:
    return rows.filter(pc.greater(rows.column(schema.TARGET_TIMESTAMP), since))
