"""Batch recommendation with Ray Data: event histories in, top-K rows out.

Histories are grouped per user exactly as ``prepare`` groups them (the same hash-bucketed
shuffle, validation, time order, and the ``data`` settings ``dedup``, ``max_history`` and
``bucket_rows``: the CLI passes those the run's training data was prepared with) into
per-bucket users files beside the output; Ray Data streams them through the shared
:class:`Recommender`, and the rows stream into one Parquet file. The export, the histories
and the output may each be local or ``s3://``. With ``explain``, each row also says which
history events its item owes its score to (:mod:`recsys_dist.inference.explain`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.config import DataConfig
from recsys_dist.data import grouping
from recsys_dist.data.events import event_file_stats, readable
from recsys_dist.data.prepared import read_users
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.inference.explain import BECAUSE_TYPE, explain_many
from recsys_dist.inference.predictor import (
    QUERY_TIME,
    RECOMMENDED,
    SCORES,
    UNKNOWN_ITEMS,
    Recommender,
)

RANK = "rank"
SCORE = "score"
RECOMMENDATION_SCHEMA = pa.schema(
    [
        pa.field(schema.USER_ID, pa.string()),
        pa.field(RANK, pa.int32()),
        pa.field(schema.ITEM_ID, pa.string()),
        pa.field(SCORE, pa.float32()),
    ]
)
BECAUSE = "because"  # with explain: the history events behind the row's item, strongest first
EXPLAINED_SCHEMA = RECOMMENDATION_SCHEMA.append(pa.field(BECAUSE, BECAUSE_TYPE))


@dataclass
class RecommendSummary:
    users: int
    rows: int
    unknown_items_ignored: int
    output: str
    seconds: float = 0.0  # from the first read to the last row written
    users_per_s: float = 0.0


def recommend_histories(
    model_dir: str,
    histories: str,
    output: str,
    k: int,
    exclude_seen: bool = True,
    data: DataConfig | None = None,
    explain: bool = False,
    rank_by: str = "score",
) -> RecommendSummary:
    """Top-``k`` for every user in an event file; rows ``user_id, rank, item_id, score``.

    ``data`` (default: ``DataConfig()``) says how histories are grouped: ``max_history``
    (the most recent events kept per user), ``dedup`` and ``bucket_rows``. ``explain`` adds
    a ``because`` column (:data:`EXPLAINED_SCHEMA`) at the cost of one more forward pass
    over ``max_len`` sequences per user. ``rank_by="rating"`` ranks by predicted rating (a
    model trained with ratings; ``score`` is then the rating); the events' ratings are read.
    """
    data = data or DataConfig()
    stats, _, rows = readable(event_file_stats(histories), on_bad_rows="error")
    files = [stat.path for stat in stats]
    spec = grouping.spec_for(rows, data.bucket_rows, data.max_history, data.dedup)
    # The shuffle's parts go beside the output: the one place every node can reach.
    scratch = storage.join(storage.parent(output), f"_recommend-{uuid.uuid4().hex[:12]}")
    try:
        for _ in grouping.scatter(files, 0, scratch, spec.num_buckets, on_bad_rows="error"):
            pass  # every file's events are in the buckets once the tasks have ended
        users_dir = storage.join(scratch, "users")
        for _ in grouping.gather(scratch, spec, users_dir):
            pass
        users = storage.read_parquet_dataset(users_dir)
        return _score(users, model_dir, output, k, exclude_seen, explain, rank_by)
    finally:
        storage.delete_dir(scratch)


def score_prepared(
    model_dir: str, prepared_dir: str, output: str, k: int, exclude_seen: bool = True
) -> RecommendSummary:
    """Top-``k`` for every user of a prepared dataset (each user once), e.g. nightly.

    Users' item indices are turned back into raw ids with the dataset's vocabulary, so a model
    trained on an older vocabulary scores them too (items it does not know are counted).
    """
    users = read_users(prepared_dir)  # with ratings where the dataset has them
    vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
    with_ids = users.map_batches(
        with_raw_ids, batch_format="pyarrow", fn_kwargs={"item_ids": vocab.item_ids}
    )
    return _score(with_ids, model_dir, output, k, exclude_seen)


def with_raw_ids(users: pa.Table, item_ids: pa.Array) -> pa.Table:
    """Prepared users with their item indices turned back into raw ids (``item_ids``: the
    vocabulary's), as every predictor input holds them; other columns pass through."""
    items = users.column(schema.ITEMS).combine_chunks()
    raw = item_ids.take(pc.subtract(items.values, schema.NUM_SPECIAL_TOKENS))
    as_lists = pa.ListArray.from_arrays(items.offsets, raw)
    return users.drop_columns([schema.ITEMS]).append_column(schema.ITEM_IDS, as_lists)


class ExplainingRecommender(Recommender):
    """The :class:`Recommender` for ``map_batches`` that also says why: each recommended
    item gets the :func:`explain_many` reasons of its user's history.

    It returns an Arrow table of explicit types: left to Ray Data to infer, a block whose
    reasons are all empty gets a null type, and joined with other blocks their reasons were
    lost (seen with Ray 2.60).
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = super().__call__(batch)
        query = batch.get(QUERY_TIME)
        found = explain_many(
            self,
            batch[schema.ITEM_IDS],
            batch[schema.TIMESTAMPS],
            out[RECOMMENDED],
            None if query is None else query.tolist(),
            ratings=batch.get(schema.RATINGS),  # read as the recommendations read them
        )
        because = [
            [[asdict(reason) for reason in reasons[item]] for item in items]
            for items, reasons in zip(out[RECOMMENDED], found, strict=True)
        ]
        return pa.table(
            {
                schema.USER_ID: pa.array(out[schema.USER_ID].astype(str)),
                RECOMMENDED: pa.array(list(out[RECOMMENDED]), pa.list_(pa.string())),
                SCORES: pa.array(list(out[SCORES]), pa.list_(pa.float32())),
                UNKNOWN_ITEMS: pa.array(out[UNKNOWN_ITEMS], pa.int64()),
                BECAUSE: pa.array(because, pa.list_(BECAUSE_TYPE)),
            }
        )


def _score(
    users,
    model_dir: str,
    output: str,
    k: int,
    exclude_seen: bool,
    explain: bool = False,
    rank_by: str = "score",
) -> RecommendSummary:
    scored = users.map_batches(
        ExplainingRecommender if explain else Recommender,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "k": k,
            "exclude_seen": exclude_seen,
            "rank_by": rank_by,
        },
        batch_format="numpy",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=1),  # one model copy
    )
    started = time.perf_counter()
    summary = RecommendSummary(users=0, rows=0, unknown_items_ignored=0, output=output)
    with (
        storage.open_output(output) as sink,
        pq.ParquetWriter(sink, EXPLAINED_SCHEMA if explain else RECOMMENDATION_SCHEMA) as writer,
    ):
        for batch in scored.iter_batches(batch_size=1024, batch_format="numpy"):
            table = _as_rows(batch, explain)
            writer.write_table(table)
            summary.users += len(batch[schema.USER_ID])
            summary.rows += table.num_rows
            summary.unknown_items_ignored += int(batch[UNKNOWN_ITEMS].sum())
    summary.seconds = round(time.perf_counter() - started, 2)
    summary.users_per_s = round(summary.users / max(summary.seconds, 1e-9), 1)
    return summary


def _as_rows(batch: dict[str, np.ndarray], explain: bool = False) -> pa.Table:
    """One row per (user, rank), best first; with ``explain``, each with its reasons."""
    counts = [len(r) for r in batch[RECOMMENDED]]
    table = pa.table(
        {
            schema.USER_ID: np.repeat(batch[schema.USER_ID].astype(str), counts),
            RANK: np.concatenate([np.arange(1, n + 1) for n in counts]).astype(np.int32),
            schema.ITEM_ID: np.concatenate(
                [np.asarray(r, dtype=object) for r in batch[RECOMMENDED]]
            ),
            SCORE: np.concatenate([np.asarray(s) for s in batch[SCORES]]).astype(np.float32),
        },
        schema=RECOMMENDATION_SCHEMA,
    )
    if not explain:
        return table
    reasons = [list(item) for user in batch[BECAUSE] for item in user]  # [rows] of dicts
    return table.append_column(EXPLAINED_SCHEMA.field(BECAUSE), pa.array(reasons, BECAUSE_TYPE))
