"""Length-grouped training batches: every row once an epoch, as many steps as plain batching,
and far less padding on a skewed (sparse-log) length distribution."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist import schema
from recsys_dist.train.batches import GROUP_BATCHES, ShardBatches, length_grouped


def skewed_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Mostly short histories and a long tail, like Amazon Beauty's (median 4, cap 50)."""
    return np.minimum(2 + np.random.default_rng(seed).geometric(0.15, rows), 50)


def padded_positions(batches: list[np.ndarray], lengths: np.ndarray) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches)


@pytest.mark.parametrize("rows", [1, 127, 128, 1000, 20_000])
def test_grouping_covers_every_row_once_in_as_many_batches_as_plain_batching(rows):
    lengths = skewed_lengths(rows)
    batches = length_grouped(lengths, 128, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(rows))
    runs = [min(GROUP_BATCHES * 128, rows - s) for s in range(0, rows, GROUP_BATCHES * 128)]
    assert len(batches) == sum(-(-run // 128) for run in runs)


def test_grouped_batches_hold_similar_events_and_a_fraction_of_the_padding():
    lengths = skewed_lengths(3 * GROUP_BATCHES * 128)  # three whole runs
    rng = np.random.default_rng(0)
    grouped = length_grouped(lengths, 128, rng)
    order = rng.permutation(len(lengths))
    plain = [order[s : s + 128] for s in range(0, len(order), 128)]
    assert padded_positions(grouped, lengths) < 0.4 * padded_positions(plain, lengths)
    events = np.array([lengths[b].sum() for b in grouped])
    assert events.max() - events.min() <= 2 * lengths.max()  # equal but for one row's cut


def test_grouping_is_a_pure_function_of_the_seed_and_shuffles_the_batch_order():
    lengths = skewed_lengths(5000)
    first = length_grouped(lengths, 64, np.random.default_rng(3))
    again = length_grouped(lengths, 64, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    longest = [int(lengths[b].max()) for b in first]
    assert longest != sorted(longest)  # not all short batches first


class LengthShard:
    """A ``DataIterator`` stand-in whose rows have skewed lengths."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = lengths

    def iter_batches(self, batch_size, **_):
        for start in range(0, len(self.lengths), batch_size):
            chosen = range(start, min(start + batch_size, len(self.lengths)))
            items = np.empty(len(chosen), object)
            items[:] = [np.full(self.lengths[i], 2) for i in chosen]
            yield {schema.USER_ID: np.array([str(i) for i in chosen]), schema.ITEMS: items}


@pytest.mark.parametrize("cache_rows", [0, 10_000])  # streamed every epoch, or replayed
def test_a_grouped_shard_yields_every_row_once_an_epoch_streamed_or_replayed(cache_rows):
    lengths = skewed_lengths(3000)
    batches = ShardBatches(LengthShard(lengths), 32, cache_rows, shuffle=True, group_by_length=True)
    for epoch in range(2):
        epoch_batches = list(batches.epoch(seed=epoch))
        users = [int(u) for b in epoch_batches for u in b[schema.USER_ID]]
        assert sorted(users) == list(range(3000))
        widths = sum(len(b[schema.ITEMS]) * max(map(len, b[schema.ITEMS])) for b in epoch_batches)
        assert widths < 0.5 * len(users) * lengths.max()


def test_validation_batches_are_grouped_by_rows_not_events():
    """Scores are [rows x items]: a validation batch of short histories must not hold more
    rows than ``batch_size``."""
    lengths = skewed_lengths(3000)
    batches = ShardBatches(LengthShard(lengths), 64, 0, shuffle=False, group_by_length=True)
    epoch = list(batches.epoch(seed=0))
    assert sorted(int(u) for b in epoch for u in b[schema.USER_ID]) == list(range(3000))
    assert max(len(b[schema.USER_ID]) for b in epoch) == 64
    assert len(epoch) == -(-3000 // 64)


def test_without_grouping_rows_keep_their_order_unshuffled():
    lengths = skewed_lengths(100)
    batches = ShardBatches(LengthShard(lengths), 32, 0, shuffle=False)
    users = [int(u) for b in batches.epoch(seed=0) for u in b[schema.USER_ID]]
    assert users == list(range(100))
