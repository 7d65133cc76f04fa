"""Properties of padding and cloze masking."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist.data.masking import (
    IGNORE_INDEX,
    append_mask_for_prediction,
    mask_for_training,
    pad_left,
    shift_for_next_item,
)
from recsys_dist.schema import MASK_INDEX, PAD_INDEX


def random_batch(rows: int, length: int, seed: int = 0) -> np.ndarray:
    """Left-padded rows of random lengths 0..length (row 0 empty, row 1 a single item)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, rows)
    lengths[:2] = (0, 1)
    return pad_left([rng.integers(2, 1000, n) for n in lengths], length)


def test_pad_left_keeps_the_most_recent_elements():
    got = pad_left([np.array([5, 6, 7, 8]), np.array([9]), np.array([], dtype=np.int64)], 3)
    np.testing.assert_array_equal(got, [[6, 7, 8], [0, 0, 9], [0, 0, 0]])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(pad_left([[1, 2]], 4, pad=-1), [[-1, -1, 1, 2]])
    with pytest.raises(ValueError):
        pad_left([[1]], 0)


def test_mask_for_training_properties():
    items = random_batch(4000, 20)
    inputs, labels = mask_for_training(items, np.random.default_rng(1), 0.3, 0.0)
    real = items != PAD_INDEX
    masked = inputs == MASK_INDEX
    assert not (masked & ~real).any(), "PAD is never masked"
    np.testing.assert_array_equal(labels[masked], items[masked])
    assert (labels[~masked] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(inputs[~masked], items[~masked])
    nonempty = real.any(axis=1)
    assert masked[nonempty].any(axis=1).all(), "every non-empty row has a masked position"
    assert not masked[~nonempty].any()
    # The share is mask_prob, plus the forced single mask of rows that drew none (short rows).
    share = masked.sum() / real.sum()
    assert 0.3 <= share < 0.32


def test_last_item_only_rows():
    items = np.random.default_rng(0).integers(2, 1000, (4000, 30))  # full rows
    inputs, _ = mask_for_training(items, np.random.default_rng(2), 0.3, 0.5)
    masked = inputs == MASK_INDEX
    last_only = masked[:, -1] & (masked.sum(axis=1) == 1)  # ~never from 30 coin flips at 0.3
    assert 0.47 < last_only.mean() < 0.53
    short = random_batch(500, 10)
    inputs, _ = mask_for_training(short, np.random.default_rng(3), 0.5, 1.0)
    masked = inputs == MASK_INDEX
    nonempty = (short != PAD_INDEX).any(axis=1)
    np.testing.assert_array_equal(masked[nonempty][:, -1], True)
    assert (masked.sum(axis=1)[nonempty] == 1).all()


def test_masking_is_deterministic_for_a_seed():
    items = random_batch(50, 12)
    first = mask_for_training(items, np.random.default_rng(7), 0.2, 0.1)
    again = mask_for_training(items, np.random.default_rng(7), 0.2, 0.1)
    other = mask_for_training(items, np.random.default_rng(8), 0.2, 0.1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_mask_for_training_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        mask_for_training(np.ones(5, dtype=np.int64), np.random.default_rng(), 0.2, 0.1)
    with pytest.raises(ValueError, match="mask_prob=1"):
        mask_for_training(np.ones((2, 5), dtype=np.int64), np.random.default_rng(), 1, 0.1)


def test_append_mask_for_prediction():
    items, times = append_mask_for_prediction(
        [np.array([5, 6, 7, 8]), np.array([9])],
        [np.array([10, 20, 30, 40]), np.array([50])],
        np.array([45, 60]),
        length=3,
    )
    np.testing.assert_array_equal(items, [[7, 8, MASK_INDEX], [0, 9, MASK_INDEX]])
    np.testing.assert_array_equal(times, [[30, 40, 45], [0, 50, 60]])
    with pytest.raises(ValueError, match="must match"):
        append_mask_for_prediction([np.array([1])], [], np.array([1]), 3)


def test_shift_for_next_item_labels_each_event_with_the_one_after_it():
    items = np.array([[0, 0, 4, 5, 6], [3, 4, 5, 6, 7], [0, 0, 0, 0, 8]])
    buckets = np.array([[0, 0, 0, 2, 3], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    inputs, shifted, labels = shift_for_next_item(items, buckets)
    assert inputs.tolist() == [[0, 0, 4, 5], [3, 4, 5, 6], [0, 0, 0, 0]]
    assert shifted.tolist() == [[0, 0, 2, 3], [1, 2, 3, 4], [0, 0, 0, 0]]
    ignore = IGNORE_INDEX
    assert labels.tolist() == [[ignore, ignore, 5, 6], [4, 5, 6, 7], [ignore] * 4]
    with pytest.raises(ValueError, match="L >= 2"):
        shift_for_next_item(items[:, :1], buckets[:, :1])
