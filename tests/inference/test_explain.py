"""Explanations by leave-one-out occlusion: each weight is the score drop it claims to be
(on the tiny untrained export, fast; a rated event leaves with its rating), and on the shared
trained model removing the top-3 events lowers a recommendation's score more than removing 3
random ones (slow)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.inference.explain import explain
from recsys_dist.inference.predictor import Recommender


def _users(prepared, recommender: Recommender, count: int, min_events: int):
    users = pq.read_table(prepared / schema.USERS_DIR)
    found = []
    for items, times in zip(users["items"].to_pylist(), users[schema.TIMESTAMPS].to_pylist()):
        if len(items) >= min_events:
            ids = recommender.vocab.to_item_ids(np.asarray(items)).to_pylist()
            found.append((ids, np.asarray(times, np.int64)))
    return found[:count]


def _score(recommender: Recommender, ids, times, item: str, query: int) -> float:
    history = recommender.vocab.lookup(ids)
    scores = recommender.next_item_scores([history], [np.asarray(times)], np.array([query]))
    return float(scores[0, recommender.vocab.lookup([item])[0]])


def test_each_weight_is_the_score_drop_without_its_event(tiny_run):
    recommender = Recommender(run_layout.model_dir(tiny_run.run), k=2)
    ((ids, times),) = _users(tiny_run.prepared, recommender, 1, min_events=12)
    read = recommender.model.config.max_len - 1
    ids, times = ids[-read:], times[-read:]
    recommended = recommender.recommend([ids], [times]).item_ids[0]
    found = explain(recommender, ids, times, [*recommended, "no-such-item"], top=3)
    assert found["no-such-item"] == []
    query = int(times[-1])
    for item in recommended:
        reasons = found[item]
        assert 1 <= len(reasons) <= 3
        assert [r.weight for r in reasons] == sorted((r.weight for r in reasons), reverse=True)
        assert all(r.weight > 0 and 0 < r.share <= 1 for r in reasons)
        whole = _score(recommender, ids, times, item, query)
        for reason in reasons:
            (at,) = [i for i, t in enumerate(times) if t == reason.timestamp][:1]
            assert ids[at] == reason.item_id
            without = _score(
                recommender, ids[:at] + ids[at + 1 :], np.delete(times, at), item, query
            )
            assert whole - without == pytest.approx(reason.weight, abs=1e-4)


def test_a_rated_event_leaves_with_its_rating(tiny_run):
    """The tiny model reads ratings (its data has some): the reasons are those of the rated
    history, each weight the score drop without the event and its rating."""
    recommender = Recommender(run_layout.model_dir(tiny_run.run), k=1)
    assert recommender.predicts_ratings
    read = recommender.model.config.max_len - 1
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).to_pylist()
    rated_users = [u for u in users if not np.isnan(np.float32(u[schema.RATINGS][-read:])).all()]
    user = rated_users[0]
    ids = recommender.vocab.to_item_ids(np.asarray(user["items"][-read:])).to_pylist()
    times = np.asarray(user[schema.TIMESTAMPS][-read:], np.int64)
    rated = np.asarray(user[schema.RATINGS][-read:], np.float32)
    (item,) = recommender.recommend([ids], [times], ratings=[rated]).item_ids[0]
    found = explain(recommender, ids, times, [item], top=read, ratings=list(rated))[item]
    assert found and found != explain(recommender, ids, times, [item], top=read)[item]
    history, column = recommender.vocab.lookup(ids), recommender.vocab.lookup([item])[0]

    def score(keep: np.ndarray) -> float:
        query = np.array([times[-1]])
        scores = recommender.next_item_scores([history[keep]], [times[keep]], query, [rated[keep]])
        return float(scores[0, column])

    for reason in found:
        keep = ~((np.asarray(ids) == reason.item_id) & (times == reason.timestamp))
        assert keep.sum() == len(ids) - 1
        assert score(np.ones(len(ids), bool)) - score(keep) == pytest.approx(
            reason.weight, abs=1e-5
        )


@pytest.mark.slow
def test_removing_the_top_three_events_costs_more_than_removing_three_at_random(trained_run):
    """Over 40 users of the shared trained model, each one's top recommendation: the mean
    score drop without its 3 most-weighted events is at least twice the mean drop without 3
    events drawn at random from those the model reads (and positive)."""
    recommender = Recommender(run_layout.model_dir(trained_run.run), k=1)
    rng = np.random.default_rng(0)
    read = recommender.model.config.max_len - 1
    top_drops, random_drops = [], []
    for ids, times in _users(trained_run.prepared, recommender, 40, min_events=read):
        ids, times = ids[-read:], times[-read:]
        (item,) = recommender.recommend([ids], [times]).item_ids[0]
        reasons = explain(recommender, ids, times, [item], top=3)[item]
        query = int(times[-1])
        whole = _score(recommender, ids, times, item, query)
        chosen = {int(np.flatnonzero(times == r.timestamp)[0]) for r in reasons}
        for drops, removed in (
            (top_drops, chosen),
            (random_drops, set(rng.choice(len(ids), size=3, replace=False).tolist())),
        ):
            kept = [i for i in range(len(ids)) if i not in removed]
            drops.append(
                whole - _score(recommender, [ids[i] for i in kept], times[kept], item, query)
            )
    top, random = float(np.mean(top_drops)), float(np.mean(random_drops))
    assert top > 0 and top >= 2 * random, (top, random)
