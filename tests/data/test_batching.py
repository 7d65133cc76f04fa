"""Model inputs: the event-age buckets follow the same shift as the gap buckets."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist import schema
from recsys_dist.data.batching import prediction_inputs, training_inputs


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
    # ages 2**20 + 1000, 2**20 + 990 and 2**20 seconds: log2 -> 20 -> bucket 21
    np.testing.assert_array_equal(query_row, [0, 21, 21, 21, 0])
