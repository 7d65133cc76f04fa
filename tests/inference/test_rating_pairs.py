"""``score-ratings`` on the session's tiny untrained export: every pair once, rated as the
predictor rates it, unknown users from an empty history, unknown items null."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.errors import UserInputError
from recsys_dist.inference.predictor import Recommender
from recsys_dist.inference.rating_pairs import (
    HISTORY_EVENTS,
    PREDICTED_RATING,
    read_pairs,
    score_ratings,
)


def test_every_pair_is_rated_once_as_the_predictor_rates_it(tiny_run, tmp_path):
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).slice(0, 3)
    model_dir = run_layout.model_dir(tiny_run.run)
    recommender = Recommender(model_dir)
    names = users.column(schema.USER_ID).to_pylist()
    items = [recommender.vocab.to_item_ids(np.asarray(i)).to_pylist() for i in users["items"]]
    pairs = pa.table(
        {
            schema.USER_ID: [names[0], names[0], names[1], names[2], "new-user"],
            schema.ITEM_ID: [items[0][0], "never-seen", items[1][1], items[2][2], items[0][0]],
        }
    )
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    pairs = read_pairs(str(tmp_path / "pairs.parquet"))
    summary = score_ratings(model_dir, str(tiny_run.prepared), pairs, str(tmp_path / "out"))
    assert (summary.pairs, summary.users_without_history, summary.unknown_items) == (5, 1, 1)
    rows = pq.read_table(tmp_path / "out").to_pandas().set_index([schema.USER_ID, schema.ITEM_ID])
    assert len(rows) == 5 and np.isnan(rows.loc[(names[0], "never-seen"), PREDICTED_RATING])
    assert rows.loc[("new-user", items[0][0]), HISTORY_EVENTS] == 0
    times = [np.asarray(t, np.int64) for t in users[schema.TIMESTAMPS].to_pylist()]
    ratings = [np.asarray(r, np.float32) for r in users[schema.RATINGS].to_pylist()]
    direct = recommender.rate(
        items, times, [[items[0][0]], [items[1][1]], [items[2][2]]], ratings=ratings
    )
    got = [
        rows.loc[(names[r], c), PREDICTED_RATING]
        for r, c in enumerate([items[0][0], items[1][1], items[2][2]])
    ]
    np.testing.assert_allclose(got, np.concatenate(direct), rtol=1e-5)
    read = rows.loc[(names[1], items[1][1]), HISTORY_EVENTS]
    assert read == min(len(items[1]), recommender.model.config.max_len - 1)


def test_pairs_without_a_user_or_item_column_are_named(tmp_path):
    pq.write_table(pa.table({"user": ["a"], schema.ITEM_ID: ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(UserInputError, match="no column 'user_id'"):
        read_pairs(str(tmp_path / "bad.parquet"))
    with pytest.raises(UserInputError, match="does not exist"):
        read_pairs(str(tmp_path / "missing.parquet"))
