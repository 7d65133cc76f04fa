"""Time-gap buckets (the log2 gap to the previous real event) and event-age buckets."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist.data.time_gaps import event_age_buckets, time_gap_buckets


def test_time_gap_buckets_hand_computed():
    items = np.array([[0, 0, 5, 6, 7, 8], [0, 3, 0, 4, 1, 9]])
    times = np.array([[99, 99, 100, 100, 101, 104], [0, 10, 0, 9, 1034, 2**40]])
    # row 0 gaps: -, 0, 1, 3 -> log2(1+gap) floors 0, 1, 2 -> buckets 1, 2, 3
    # row 1: PAD in the middle is skipped; gaps -1 (clamped to 0), 1025, huge (capped at 4)
    expected = np.array([[0, 0, 0, 1, 2, 3], [0, 0, 0, 1, 4, 4]])
    got = time_gap_buckets(times, items, num_buckets=5)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64
    assert time_gap_buckets(times, items, num_buckets=32)[1, 4] == 1 + 10  # log2(1026) -> 10


def test_time_gap_buckets_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        time_gap_buckets(np.zeros((2, 3)), np.zeros((2, 4)), 4)
    with pytest.raises(ValueError, match="num_buckets"):
        time_gap_buckets(np.zeros((2, 3)), np.zeros((2, 3)), 1)


def test_event_ages_hand_computed():
    items = np.array([[0, 5, 6, 7]])
    times = np.array([[50, 100, 101, 108]])
    ages = event_age_buckets(times, items, num_buckets=5)
    # row q: 1 + floor(log2(1 + t[q] - t[k])) for real k < q, capped at 4; 0 elsewhere.
    expected = np.array(
        [
            [0, 0, 0, 0],  # PAD query
            [0, 0, 0, 0],  # nothing before the first event
            [0, 2, 0, 0],  # age 1 -> 2
            [0, 4, 4, 0],  # ages 8 -> 4, 7 -> 4 (3 + 1)
        ]
    )
    np.testing.assert_array_equal(ages[0], expected)
    assert ages.dtype == np.int64


def test_the_gap_is_the_age_of_the_previous_event():
    """One scale for both inputs: the gap bucket is the previous real event's age bucket."""
    rng = np.random.default_rng(0)
    items = rng.integers(2, 9, (3, 7))
    items[0, :2] = 0
    items[1, 3] = 0  # PAD in the middle is skipped by both
    times = np.sort(rng.integers(0, 10**7, (3, 7)), axis=1)
    gaps = time_gap_buckets(times, items, 16)
    ages = event_age_buckets(times, items, 16)
    for row in range(3):
        real = np.flatnonzero(items[row])
        for previous, query in zip(real[:-1], real[1:], strict=True):
            assert ages[row, query, previous] == gaps[row, query]
        assert not np.triu(ages[row]).any()  # no age for the query itself or later events


def test_event_ages_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        event_age_buckets(np.zeros((2, 3)), np.zeros((2, 4)), 4)
