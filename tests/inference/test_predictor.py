"""The one predictor (batch and online) on the session's tiny untrained export: what it
returns, what it leaves out, and that the same input always gives the same answer."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.inference.predictor import (
    PREDICTED_RATINGS,
    RECOMMENDED,
    SCORES,
    UNKNOWN_ITEMS,
    Recommender,
    model_version,
)

ROWS = 4


@pytest.fixture(scope="module")
def model_dir(tiny_run) -> str:
    return run_layout.model_dir(tiny_run.run)


@pytest.fixture(scope="module")
def recommender(model_dir) -> Recommender:
    return Recommender(model_dir, k=5)


@pytest.fixture(scope="module")
def histories(tiny_run, recommender) -> tuple[list[list[str]], list[np.ndarray]]:
    """Real users' histories as raw ids (the first ``ROWS`` users, at least 20 events each)."""
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).slice(0, ROWS)
    items = [recommender.vocab.to_item_ids(np.asarray(i)).to_pylist() for i in users["items"]]
    times = [np.asarray(t, np.int64) for t in users[schema.TIMESTAMPS].to_pylist()]
    assert all(len(row) >= 20 for row in items)
    return items, times


def batch_of(items: list[list[str]], times: list[np.ndarray]) -> dict[str, np.ndarray]:
    """A ``map_batches`` batch: ragged rows as object arrays, as Ray Data hands them over."""
    ids, stamps = np.empty(len(items), object), np.empty(len(items), object)
    ids[:], stamps[:] = [np.asarray(row, object) for row in items], times
    return {
        schema.USER_ID: np.asarray([f"u{r}" for r in range(len(items))]),
        schema.ITEM_IDS: ids,
        schema.TIMESTAMPS: stamps,
    }


def test_a_batch_gets_k_items_per_row_best_first(recommender, histories):
    out = recommender(batch_of(*histories))
    assert set(out) == {schema.USER_ID, RECOMMENDED, SCORES, UNKNOWN_ITEMS, PREDICTED_RATINGS}
    assert out[schema.USER_ID].tolist() == [f"u{r}" for r in range(ROWS)]
    assert len(out[RECOMMENDED]) == len(out[SCORES]) == ROWS
    assert out[UNKNOWN_ITEMS].tolist() == [0] * ROWS
    known = set(recommender.vocab.item_ids.to_pylist())
    for items, scores in zip(out[RECOMMENDED], out[SCORES]):
        assert len(items) == len(set(items)) == len(scores) == 5
        assert set(items) <= known
        assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 0)


def test_seen_items_are_excluded_only_when_asked(model_dir, histories):
    items, times = histories
    everything = 10_000  # k is capped at the catalogue: every item the row may get
    excluding = Recommender(model_dir, k=everything)(batch_of(items, times))[RECOMMENDED]
    keeping = Recommender(model_dir, k=everything, exclude_seen=False)(batch_of(items, times))
    catalogue = Recommender(model_dir).vocab.item_ids.to_pylist()
    for row, history in enumerate(items):
        assert not set(excluding[row]) & set(history)
        assert sorted(set(excluding[row]) | set(history)) == sorted(catalogue)
        assert sorted(keeping[RECOMMENDED][row]) == sorted(catalogue)  # seen ones included


def test_pad_and_mask_are_never_scored(recommender, histories):
    items, times = histories
    indices = [recommender.vocab.lookup(row) for row in items]
    scores = recommender.next_item_scores(indices, times, np.asarray([t[-1] for t in times]))
    assert scores.shape == (ROWS, recommender.vocab.size)
    assert np.all(np.isneginf(scores[:, : schema.NUM_SPECIAL_TOKENS].numpy()))
    assert np.all(np.isfinite(scores[:, schema.NUM_SPECIAL_TOKENS :].numpy()))


def test_unknown_items_are_ignored_and_counted(recommender, histories):
    items, times = histories
    noisy_items, noisy_times = [], []
    for row, (history, stamps) in enumerate(zip(items, times)):
        extra = row + 1  # row r gets r + 1 items the model has never seen, spread through it
        spots = np.linspace(0, len(history), extra, dtype=int)
        noisy_items.append(list(np.insert(np.asarray(history, object), spots, "never-seen")))
        noisy_times.append(np.insert(stamps, spots, stamps[np.minimum(spots, len(stamps) - 1)]))
    clean = recommender(batch_of(items, times))
    noisy = recommender(batch_of(noisy_items, noisy_times))
    assert noisy[UNKNOWN_ITEMS].tolist() == [r + 1 for r in range(ROWS)]
    assert noisy[RECOMMENDED].tolist() == clean[RECOMMENDED].tolist()
    for ours, theirs in zip(noisy[SCORES], clean[SCORES]):
        np.testing.assert_array_equal(ours, theirs)


def test_a_long_history_is_cut_to_its_most_recent_events(model_dir, histories):
    """The model reads the last ``max_len - 1`` events (and the MASK): what came before
    them changes nothing (seen items are kept, so the older ones cannot matter that way)."""
    items, times = histories
    predict = Recommender(model_dir, k=10, exclude_seen=False)
    kept = predict.model.config.max_len - 1
    assert all(len(row) > predict.model.config.max_len for row in items)
    whole = predict(batch_of(items, times))
    recent = predict(batch_of([row[-kept:] for row in items], [t[-kept:] for t in times]))
    older = [[row[-1]] * (len(row) - kept) + row[-kept:] for row in items]  # other old events
    shuffled = predict(batch_of(older, times))
    for out in (recent, shuffled):
        assert out[RECOMMENDED].tolist() == whole[RECOMMENDED].tolist()
    changed = [row[:-1] + [row[0] if row[-1] != row[0] else row[1]] for row in items]
    moved = predict(batch_of(changed, times))[SCORES]  # while the latest event does matter
    assert all(not np.array_equal(a, b) for a, b in zip(moved, whole[SCORES]))


def test_the_same_input_gives_the_same_output_and_version(model_dir, recommender, histories):
    again = Recommender(model_dir, k=5)
    first, second = recommender(batch_of(*histories)), again(batch_of(*histories))
    assert first[RECOMMENDED].tolist() == second[RECOMMENDED].tolist()
    for ours, theirs in zip(first[SCORES], second[SCORES]):
        np.testing.assert_array_equal(ours, theirs)
    assert recommender.model_version == again.model_version
    assert recommender.model_version == model_version(recommender.state, model_dir)
    data_hash, epoch = recommender.state["data_hash"], recommender.state["metrics"]["epoch"]
    assert recommender.model_version == f"{data_hash[:8]}-epoch{epoch}"


# --- ratings (the tiny run's generated purchases carry ratings: its model has a rating head) ---


def test_a_rated_model_gives_each_recommendation_its_predicted_rating(recommender, histories):
    assert recommender.predicts_ratings
    out = recommender(batch_of(*histories))
    low, high = recommender.model.config.rating_min, recommender.model.config.rating_max
    for items, rated in zip(out[RECOMMENDED], out[PREDICTED_RATINGS], strict=True):
        assert len(rated) == len(items) and ((low <= rated) & (rated <= high)).all()
    again = recommender.rate(*histories, candidates=out[RECOMMENDED])
    for rated, direct in zip(out[PREDICTED_RATINGS], again, strict=True):
        np.testing.assert_allclose(rated, direct, rtol=1e-5)


def test_ranking_by_rating_puts_the_highest_predicted_ratings_first(recommender, histories):
    by_rating = recommender.recommend(*histories, rank_by=["rating"] * ROWS)
    for scores, rated in zip(by_rating.scores, by_rating.ratings, strict=True):
        np.testing.assert_allclose(scores, rated, rtol=1e-5)
        assert (np.diff(rated) <= 1e-6).all()
    everything = recommender.rate(
        *histories, candidates=[recommender.vocab.item_ids.to_pylist()] * ROWS
    )
    for row, rated in enumerate(by_rating.ratings):
        seen = set(histories[0][row])
        unseen = [
            r
            for i, r in zip(recommender.vocab.item_ids.to_pylist(), everything[row])
            if i not in seen
        ]
        assert rated[0] == pytest.approx(max(unseen), rel=1e-5)


def test_ratings_of_the_history_change_the_prediction(recommender, histories):
    items, times = histories
    low = [np.full(len(row), 1.0, np.float32) for row in items]
    high = [np.full(len(row), 5.0, np.float32) for row in items]
    candidates = [row[:3] for row in items]
    assert not np.allclose(
        recommender.rate(items, times, candidates, ratings=low),
        recommender.rate(items, times, candidates, ratings=high),
    )


def test_unknown_candidates_get_no_rating(recommender, histories):
    rated = recommender.rate(*histories, candidates=[["never-seen", histories[0][0][0]]] * ROWS)
    assert all(np.isnan(row[0]) and np.isfinite(row[1]) for row in rated)
