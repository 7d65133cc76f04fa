"""Hash-bucketed grouping: stable buckets, merge rounds equal one sort, skewed users cut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys_dist import schema
from recsys_dist.data import grouping
from recsys_dist.data.events import ORDER


def test_user_buckets_are_fixed_forever_and_spread_evenly():
    ids = pa.array(["u1", "u2", "alice", "1234567", "ü-ñ"])
    # Golden values: an incremental dataset depends on these never changing.
    assert grouping.user_buckets(ids, 1000).tolist() == GOLDEN_BUCKETS
    chunked = pa.chunked_array([ids.slice(0, 2), ids.slice(2)])
    assert grouping.user_buckets(chunked, 1000).tolist() == GOLDEN_BUCKETS
    assert grouping.user_buckets(ids.slice(2), 1000).tolist() == GOLDEN_BUCKETS[2:]
    many = pa.array([f"user-{i}" for i in range(100_000)])
    counts = np.bincount(grouping.user_buckets(many, 16), minlength=16)
    assert counts.min() > 0.9 * 100_000 / 16 and counts.max() < 1.1 * 100_000 / 16


GOLDEN_BUCKETS = [300, 682, 23, 45, 791]


def random_events(rng, rows: int, users: int, items: int = 30) -> pa.Table:
    """Events with many equal timestamps and exact duplicates, in random log order."""
    table = pa.table(
        {
            schema.USER_ID: [f"u{u}" for u in rng.integers(users, size=rows)],
            schema.ITEM_ID: [f"i{i}" for i in rng.integers(items, size=rows)],
            schema.TIMESTAMP: rng.integers(0, 40, size=rows).astype(np.int64),
            schema.EVENT_TYPE: rng.choice(["view", "click", None], size=rows).tolist(),
            ORDER: rng.permutation(rows).astype(np.int64),
            schema.RATING: rng.choice([1.0, 4.5, None], size=rows).tolist(),
        },
        schema=grouping.PART_SCHEMA,
    )
    duplicates = table.take(pa.array(rng.integers(rows, size=rows // 5)))
    order = pa.array(np.arange(rows, rows + duplicates.num_rows, dtype=np.int64))
    return pa.concat_tables(
        [table, duplicates.set_column(4, grouping.PART_SCHEMA.field(ORDER), order)]
    )


def reference_users(events: pa.Table, max_history: int) -> pd.DataFrame:
    """What grouping must produce, by the obvious pandas route."""
    frame = events.to_pandas().sort_values([schema.USER_ID, schema.TIMESTAMP, ORDER])
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.EVENT_TYPE]
    unique = frame[~frame.fillna({schema.EVENT_TYPE: "<null>"}).duplicated(keys)]
    rows = []
    for user, group in unique.groupby(schema.USER_ID, sort=True):
        kept = group.tail(max_history)
        rows.append(
            {
                schema.USER_ID: user,
                schema.ITEM_IDS: kept[schema.ITEM_ID].tolist(),
                schema.TIMESTAMPS: kept[schema.TIMESTAMP].tolist(),
                schema.RATINGS: kept[schema.RATING].fillna(UNRATED).tolist(),
                schema.NUM_EVENTS: len(group),
                schema.NUM_DUPLICATES: int((frame[schema.USER_ID] == user).sum()) - len(group),
                schema.NUM_TRUNCATED: len(group) - len(kept),
            }
        )
    return pd.DataFrame(rows).set_index(schema.USER_ID)


def as_frame(users: pa.Table) -> pd.DataFrame:
    frame = users.to_pandas().set_index(schema.USER_ID).sort_index()
    for column in (schema.ITEM_IDS, schema.TIMESTAMPS):
        frame[column] = frame[column].map(list)
    frame[schema.RATINGS] = frame[schema.RATINGS].map(lambda r: np.nan_to_num(r, nan=UNRATED))
    frame[schema.RATINGS] = frame[schema.RATINGS].map(lambda r: [float(x) for x in r])
    return frame[[schema.ITEM_IDS, schema.TIMESTAMPS, schema.RATINGS, *COUNTS]]


UNRATED = -1.0  # NaN in stored lists; a number here, so that lists compare equal


COUNTS = (schema.NUM_EVENTS, schema.NUM_DUPLICATES, schema.NUM_TRUNCATED)


@pytest.mark.parametrize("compact_rows", [50, 400, 10_000])
def test_merge_rounds_give_exactly_one_global_sort(tmp_path, compact_rows):
    rng = np.random.default_rng(7)
    events = random_events(rng, rows=2_000, users=25)
    parts = []
    for i, start in enumerate(range(0, events.num_rows, 300)):
        grouping._write_ipc(events.slice(start, 300), str(tmp_path), f"p{i:03d}.arrow")
        parts.append(str(tmp_path / f"p{i:03d}.arrow"))
    spec = grouping.GroupingSpec(1, max_history=60, dedup=True, compact_rows=compact_rows)
    users = grouping.gather_bucket(parts, None, spec)
    assert users.schema == schema.USER_SEQUENCE_SCHEMA
    expected = reference_users(events, max_history=60)
    got = as_frame(users)
    sequences = [schema.ITEM_IDS, schema.TIMESTAMPS, schema.RATINGS]
    pd.testing.assert_frame_equal(got[sequences], expected[sequences])
    accepted = got[schema.NUM_EVENTS] + got[schema.NUM_DUPLICATES]
    pd.testing.assert_series_equal(
        accepted, expected[schema.NUM_EVENTS] + expected[schema.NUM_DUPLICATES]
    )
    if compact_rows >= events.num_rows:  # one round: every count exact
        pd.testing.assert_frame_equal(got, expected[got.columns])
    else:  # a duplicate of an event cut in an earlier round counts as cut
        assert (got[schema.NUM_DUPLICATES] <= expected[schema.NUM_DUPLICATES]).all()
    lengths = users.column(schema.ITEM_IDS).to_pandas().map(len)
    events_kept = (
        users.column(schema.NUM_EVENTS).to_numpy() - users.column(schema.NUM_TRUNCATED).to_numpy()
    )
    assert (lengths.to_numpy() == events_kept).all()


def test_a_skewed_user_is_cut_to_its_most_recent_events_in_rounds(tmp_path, monkeypatch):
    """A bot with 200k events merges in rounds of 5k: state never holds more than that
    plus max_history of its events, and the user is reported."""
    bot = pa.table(
        {
            schema.USER_ID: ["bot"] * 200_000,
            schema.ITEM_ID: [f"i{i % 997}" for i in range(200_000)],
            schema.TIMESTAMP: np.arange(200_000, dtype=np.int64),
            schema.EVENT_TYPE: pa.nulls(200_000, pa.string()),
            ORDER: np.arange(200_000, dtype=np.int64),
            schema.RATING: pa.nulls(200_000, pa.float32()),
        },
        schema=grouping.PART_SCHEMA,
    )
    person = bot.slice(0, 5).set_column(
        0, grouping.PART_SCHEMA.field(schema.USER_ID), pa.array(["p"] * 5)
    )
    parts = []
    for i, start in enumerate(range(0, bot.num_rows, 5_000)):
        grouping._write_ipc(bot.slice(start, 5_000), str(tmp_path), f"p{i:03d}.arrow")
        parts.append(str(tmp_path / f"p{i:03d}.arrow"))
    grouping._write_ipc(person, str(tmp_path), "person.arrow")
    parts.append(str(tmp_path / "person.arrow"))
    largest_state = 0
    original = grouping.compact

    def watching(state, new, spec, final):
        nonlocal largest_state
        largest_state = max(largest_state, state.num_rows + new.num_rows)
        return original(state, new, spec, final)

    monkeypatch.setattr(grouping, "compact", watching)
    spec = grouping.GroupingSpec(1, max_history=100, dedup=True, compact_rows=5_000)
    users = grouping.gather_bucket(parts, None, spec)
    assert largest_state <= 5_000 + 100 + 5
    rows = as_frame(users)
    assert rows.loc["bot", schema.TIMESTAMPS] == list(range(199_900, 200_000))
    assert rows.loc["bot", schema.NUM_EVENTS] == 200_000
    assert rows.loc["bot", schema.NUM_TRUNCATED] == 199_900
    assert rows.loc["p", schema.NUM_TRUNCATED] == 0
    assert list(grouping.iter_skewed(users)) == [
        {"user_id": "bot", "events": 200_000, "truncated": 199_900}
    ]
