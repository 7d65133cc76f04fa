"""``score-ratings``: predicted ratings of given (user, item) pairs, in batch with Ray Data.

The method this product implements ranks items by predicted rating; this is its batch form.
Each pair's user is read from a prepared dataset (its history: items, times and ratings, as
the model read them in training), every user's pairs are scored in one forward pass by the
same :class:`~recsys_dist.inference.predictor.Recommender` that serves, and rows stream into
one Parquet file: ``user_id, item_id, predicted_rating, history_events``. A user the dataset
does not know is rated from an empty history (``history_events`` 0): the item's bias and the
model's prior; an item the model does not know gets a null rating.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.data.prepared import read_users
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import UserInputError
from recsys_dist.inference.batch import with_raw_ids
from recsys_dist.inference.predictor import Recommender

PREDICTED_RATING = "predicted_rating"
HISTORY_EVENTS = "history_events"
RATED_PAIRS_SCHEMA = pa.schema(
    [
        pa.field(schema.USER_ID, pa.string()),
        pa.field(schema.ITEM_ID, pa.string()),
        pa.field(PREDICTED_RATING, pa.float32()),  # null: the model does not know the item
        pa.field(HISTORY_EVENTS, pa.int64()),  # events of the user's history the model read
    ]
)


@dataclass
class RatingSummary:
    pairs: int
    users: int
    users_without_history: int
    unknown_items: int
    output: str
    seconds: float = 0.0


def read_pairs(path: str) -> dict[str, list[str]]:
    """``user_id -> [item_id, ...]`` from a Parquet file with those two columns (ids of any
    integer or string type)."""
    if not storage.exists(path):
        raise UserInputError(f"--pairs: {path} does not exist")
    with storage.open_input(path) as handle:
        table = pq.read_table(handle)
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in table.column_names]
    if missing:
        raise UserInputError(f"{path}: no column {missing[0]!r} (pairs need user_id, item_id)")
    users, items = (pc.cast(table.column(c), pa.string()) for c in (schema.USER_ID, schema.ITEM_ID))
    nulls = pc.sum(pc.or_(pc.is_null(users), pc.is_null(items))).as_py() or 0
    if nulls:
        raise UserInputError(f"{path}: {nulls} row(s) with a null user_id or item_id")
    pairs: dict[str, list[str]] = defaultdict(list)
    for user, item in zip(users.to_pylist(), items.to_pylist(), strict=True):
        pairs[user].append(item)
    return dict(pairs)


class PairRater(Recommender):
    """For ``map_batches``: a batch of users (raw-id histories) → rows of their pairs."""

    def __init__(self, model_dir: str, pairs: dict[str, list[str]]) -> None:
        super().__init__(model_dir)
        if not self.predicts_ratings:
            raise UserInputError(
                f"{model_dir}: the model has no rating head (trained on data without ratings)"
            )
        self.pairs = pairs

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        users = [str(u) for u in batch[schema.USER_ID]]
        ratings = batch.get(schema.RATINGS)
        return self.rows(
            users,
            [list(ids) for ids in batch[schema.ITEM_IDS]],
            [np.asarray(t, np.int64) for t in batch[schema.TIMESTAMPS]],
            None if ratings is None else [np.asarray(r, np.float32) for r in ratings],
        )

    def rows(self, users, item_ids, timestamps, ratings=None) -> pa.Table:
        candidates = [self.pairs[u] for u in users]
        predicted = self.rate(item_ids, timestamps, candidates, ratings=ratings)
        counts = [len(c) for c in candidates]
        read = [min(len(ids), self.model.config.max_len - 1) for ids in item_ids]
        return pa.table(
            {
                schema.USER_ID: np.repeat(np.asarray(users, object), counts),
                schema.ITEM_ID: [item for row in candidates for item in row],
                PREDICTED_RATING: pa.array(np.concatenate(predicted), from_pandas=True),
                HISTORY_EVENTS: np.repeat(np.asarray(read, np.int64), counts),
            },
            schema=RATED_PAIRS_SCHEMA,
        )


def score_ratings(
    model_dir: str, prepared_dir: str, pairs: dict[str, list[str]], output: str
) -> RatingSummary:
    """Predicted ratings of every pair (``user -> items``, from :func:`read_pairs`); rows
    written to ``output``."""
    started = time.perf_counter()
    known = _users_with_pairs(prepared_dir, pairs)
    scored = known.map_batches(
        PairRater,
        fn_constructor_kwargs={"model_dir": model_dir, "pairs": pairs},
        batch_format="numpy",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=1),  # one model copy
    )
    summary = RatingSummary(0, 0, 0, 0, output)
    seen: set[str] = set()
    with storage.open_output(output) as sink, pq.ParquetWriter(sink, RATED_PAIRS_SCHEMA) as writer:
        for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            _write(writer, table, summary)
            seen.update(table.column(schema.USER_ID).unique().to_pylist())
        cold = sorted(set(pairs) - seen)
        if cold:  # users the dataset does not know: an empty history each
            rater = PairRater(model_dir, {u: pairs[u] for u in cold})
            empty = [np.zeros(0, np.int64)] * len(cold)
            _write(writer, rater.rows(cold, [[]] * len(cold), empty), summary)
            summary.users_without_history = len(cold)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _write(writer: pq.ParquetWriter, table: pa.Table, summary: RatingSummary) -> None:
    writer.write_table(table)
    summary.pairs += table.num_rows
    summary.users += len(table.column(schema.USER_ID).unique())
    summary.unknown_items += table.column(PREDICTED_RATING).null_count


def _users_with_pairs(prepared_dir: str, pairs: dict[str, list[str]]) -> ray.data.Dataset:
    """The prepared users that have pairs, with raw item ids (and ratings where rated)."""
    users = read_users(prepared_dir)
    vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
    return users.map_batches(
        _select_with_raw_ids,
        batch_format="pyarrow",
        fn_kwargs={"wanted": pa.array(sorted(pairs)), "item_ids": vocab.item_ids},
    )


def _select_with_raw_ids(users: pa.Table, wanted: pa.Array, item_ids: pa.Array) -> pa.Table:
    users = users.filter(pc.is_in(users.column(schema.USER_ID), value_set=wanted))
    return with_raw_ids(users, item_ids)
