"""Time-gap buckets: the log2 gap to the previous real event."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist.data.time_gaps import time_gap_buckets


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
