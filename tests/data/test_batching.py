"""Model inputs: the event-age buckets follow the same shift as the gap buckets; ratings
enter as buckets and leave as labels without leaking the predicted event's."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist import schema
from recsys_dist.data.batching import RatingScale, prediction_inputs, training_inputs
from recsys_dist.data.masking import IGNORE_INDEX, pad_left


def windows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = [3, 6, 9]  # shorter than, equal to and longer than max_len
    items = [rng.integers(2, 20, n) for n in lengths]
    times = [np.cumsum(rng.integers(0, 10**6, n)) for n in lengths]
    return {schema.ITEMS: np.array(items, object), schema.TIMESTAMPS: np.array(times, object)}


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_ages_come_only_when_asked_and_match_the_inputs(objective):
    rng = np.random.default_rng(0)
    plain = training_inputs(windows(), 6, 16, objective, rng, 0.4, 0.1)
    aged = training_inputs(windows(), 6, 16, objective, np.random.default_rng(0), 0.4, 0.1, True)
    assert plain.age_buckets is None
    batch, length = aged.items.shape
    assert aged.age_buckets.shape == (batch, length, length)
    np.testing.assert_array_equal(aged.items, plain.items)


def test_a_causal_position_sees_its_own_event_aged_at_the_time_it_predicts():
    """Position t holds event t and predicts event t + 1: event t's age there is the gap
    from t to t + 1, which is the gap input of that position."""
    inputs = training_inputs(windows(), 6, 16, "causal", np.random.default_rng(0), 0, 0, True)
    diagonal = np.diagonal(inputs.age_buckets, axis1=1, axis2=2)  # [B, L - 1]
    np.testing.assert_array_equal(diagonal, inputs.time_buckets)
    assert not np.triu(inputs.age_buckets, k=1).any()  # nothing from the future


def test_prediction_ages_are_taken_at_the_query_time():
    history, times = [np.array([4, 5, 6])], [np.array([0, 10, 1000])]
    inputs = prediction_inputs(history, times, np.array([1000 + 2**20]), 5, 32, event_ages=True)
    query_row = inputs.age_buckets[0, -1]  # the MASK position, at the query time
    # ages 2**20 + 1000, 2**20 + 990 and 2**20 seconds: log2 -> 20 -> bucket 21; the row is
    # the three events and the MASK, no padding: inputs are as wide as the longest history
    np.testing.assert_array_equal(query_row, [21, 21, 21, 0])


SCALE = RatingScale(1.0, 5.0, num_buckets=5)


def rated_windows() -> dict[str, np.ndarray]:
    batch = windows()
    ratings = [np.arange(len(items), dtype=np.float32) % 5 + 1 for items in batch[schema.ITEMS]]
    ratings[1][2] = np.nan  # one unrated event
    return {**batch, schema.RATINGS: np.array(ratings, object)}


def test_rating_buckets_cover_the_scale_and_keep_zero_for_no_rating():
    buckets = SCALE.buckets(np.array([1.0, 2.0, 4.6, 5.0, 9.0, 0.0, np.nan]))
    np.testing.assert_array_equal(buckets, [1, 2, 5, 5, 5, 1, 0])


def test_a_causal_position_reads_its_own_rating_and_predicts_the_next_events():
    batch = rated_windows()
    inputs = training_inputs(batch, 6, 16, "causal", np.random.default_rng(0), 0, 0, False, SCALE)
    padded = pad_left(list(batch[schema.RATINGS]), 6, pad=np.nan, dtype=np.float32)
    np.testing.assert_array_equal(inputs.rating_buckets, SCALE.buckets(padded[:, :-1]))
    labelled = inputs.labels != IGNORE_INDEX
    np.testing.assert_array_equal(inputs.rating_labels[labelled], padded[:, 1:][labelled])
    assert np.isnan(inputs.rating_labels[~labelled]).all()
    assert np.isnan(inputs.rating_labels[1]).sum() == (~labelled[1]).sum() + 1  # the unrated


def test_a_cloze_mask_hides_the_rating_it_asks_for():
    batch = rated_windows()
    inputs = training_inputs(
        batch, 6, 16, "cloze", np.random.default_rng(3), 0.4, 0.1, False, SCALE
    )
    masked = inputs.labels != IGNORE_INDEX
    assert masked.any()
    assert (inputs.rating_buckets[masked] == 0).all()  # hidden as the item is
    padded = pad_left(list(batch[schema.RATINGS]), 6, pad=np.nan, dtype=np.float32)
    np.testing.assert_array_equal(inputs.rating_labels[masked], padded[masked])
    unmasked_real = ~masked & (inputs.items != schema.PAD_INDEX)
    np.testing.assert_array_equal(
        inputs.rating_buckets[unmasked_real], SCALE.buckets(padded)[unmasked_real]
    )


def test_prediction_inputs_carry_history_ratings_and_none_for_the_query():
    inputs = prediction_inputs(
        [np.array([4, 5, 6])],
        [np.array([0, 10, 20])],
        np.array([30]),
        5,
        32,
        False,
        ratings=[np.array([5.0, np.nan, 1.0])],
        rating_scale=SCALE,
    )
    # three events and the MASK: inputs are as wide as the longest history, no padding
    np.testing.assert_array_equal(inputs.rating_buckets, [[5, 0, 1, 0]])
    unrated = prediction_inputs(
        [np.array([4, 5, 6])], [np.array([0, 10, 20])], np.array([30]), 5, 32, rating_scale=SCALE
    )
    np.testing.assert_array_equal(unrated.rating_buckets, [[0, 0, 0, 0]])


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_a_batch_is_padded_to_its_longest_row_and_scores_as_if_padded_to_max_len(objective):
    """Position ids are right-aligned, so dropping all-PAD columns changes nothing the model
    computes: the same loss (dropout off) from the narrow batch and the max_len one."""
    import torch

    from recsys_dist.model import Bert4Rec
    from tests.model.tiny import tiny_config

    short = dict(windows())
    short[schema.ITEMS], short[schema.TIMESTAMPS] = (
        short[schema.ITEMS][:2],
        short[schema.TIMESTAMPS][:2],
    )
    narrow = training_inputs(short, 8, 6, objective, np.random.default_rng(0), 0.4, 0.1)
    assert narrow.items.shape[1] == 6 - (objective == "causal")  # the longest row: 6 events
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(objective=objective, dropout=0.0, attention_dropout=0.0)).eval()
    wide_items = pad_left(list(narrow.items), 8 - (objective == "causal"))
    wide = [
        torch.as_tensor(pad_left(list(a), wide_items.shape[1], pad=p))
        for a, p in ((narrow.items, 0), (narrow.time_buckets, 0), (narrow.labels, IGNORE_INDEX))
    ]
    loss_narrow = model(
        *(torch.as_tensor(a) for a in (narrow.items, narrow.time_buckets, narrow.labels))
    ).loss
    torch.testing.assert_close(model(*wide).loss, loss_narrow)


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_prediction_inputs_as_wide_as_the_longest_history_score_as_max_len_ones(objective):
    import torch

    from recsys_dist.model import Bert4Rec
    from tests.model.tiny import tiny_config

    rng = np.random.default_rng(1)
    histories = [rng.integers(2, 20, n) for n in (2, 4)]
    times = [np.cumsum(rng.integers(1, 10**5, len(h))) for h in histories]
    query = np.array([t[-1] + 60 for t in times])
    narrow = prediction_inputs(histories, times, query, 8, 6)
    assert narrow.items.shape == (2, 5)
    wide = [pad_left(list(a), 8) for a in (narrow.items, narrow.time_buckets)]
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(objective=objective)).eval()
    pairs = ((narrow.items, narrow.time_buckets), wide)
    scores = [model.score_next(*(torch.as_tensor(a) for a in x)) for x in pairs]
    torch.testing.assert_close(scores[0], scores[1])
