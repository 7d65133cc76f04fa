"""sequences: the mergeable time histogram behind the time split's cut times."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys_dist import schema
from recsys_dist.data.sequences import TIME_BINS, SplitSpec, TimeHistogram, split_rows


def direct_counts(times: np.ndarray, shift: int, first: int, bins: int) -> np.ndarray:
    return np.bincount((times >> shift) - first, minlength=bins)


@pytest.mark.parametrize("span", [1_000, 10**6, 3 * 10**9])
def test_histograms_of_parts_merge_into_the_histogram_of_the_whole(span):
    rng = np.random.default_rng(span)
    times = rng.integers(-span // 3, span, size=50_000)
    merged = TimeHistogram.empty()
    for part in np.array_split(rng.permutation(times), 9):
        merged = merged.merge(TimeHistogram.of(part))
    assert len(merged.counts) <= TIME_BINS
    expected = direct_counts(times, merged.shift, merged.first, len(merged.counts))
    np.testing.assert_array_equal(merged.counts, expected)
    assert merged.shift - TimeHistogram.of(times).shift in (0, 1)


def test_cuts_split_the_events_by_the_requested_fractions():
    times = np.random.default_rng(0).gamma(2.0, 1e6, size=200_000).astype(np.int64)
    valid_cut, test_cut = TimeHistogram.of(times).cuts(0.1, 0.1)
    assert valid_cut < test_cut
    assert np.mean(times >= test_cut) == pytest.approx(0.1, abs=0.005)
    assert np.mean((times >= valid_cut) & (times < test_cut)) == pytest.approx(0.1, abs=0.005)


def test_round_trip_through_the_manifest_and_edge_cases():
    histogram = TimeHistogram.of(np.array([7, 7, 9, 1_000_000]))
    stored = TimeHistogram.from_dict(histogram.to_dict())
    assert (stored.shift, stored.first) == (histogram.shift, histogram.first)
    np.testing.assert_array_equal(stored.counts, histogram.counts)
    assert TimeHistogram.empty().merge(histogram) is histogram
    single = TimeHistogram.of(np.array([5, 5]))
    valid_cut, test_cut = single.cuts(0.1, 0.1)
    assert 5 < valid_cut < test_cut


def rated_users() -> pa.Table:
    """Two users; the second's third event has no rating (NaN)."""
    return pa.table(
        {
            schema.USER_ID: ["a", "b"],
            schema.ITEMS: [[2, 3, 4, 5], [6, 7, 8, 9, 10, 11]],
            schema.TIMESTAMPS: [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]],
            schema.RATINGS: [[1.0, 2.0, 3.0, 4.0], [5.0, 4.0, float("nan"), 2.0, 1.0, 3.0]],
        }
    )


def test_windows_and_held_out_rows_keep_each_events_rating():
    spec = SplitSpec(split="loo", max_len=3, window_stride=1, min_user_events=2)
    windows = split_rows(rated_users(), spec, schema.TRAIN_SPLIT).to_pylist()
    for window in windows:  # every event keeps its own rating
        assert [None if r != r else r for r in window[schema.RATINGS]] == [
            {2: 1.0, 3: 2.0, 6: 5.0, 7: 4.0, 8: None, 9: 2.0}[i] for i in window[schema.ITEMS]
        ]
    test = split_rows(rated_users(), spec, schema.TEST_SPLIT).to_pylist()
    assert [row[schema.TARGET_RATING] for row in test] == [4.0, 3.0]
    valid = split_rows(rated_users(), spec, schema.VALID_SPLIT).to_pylist()
    assert valid[0][schema.RATINGS] == [1.0, 2.0] and valid[0][schema.TARGET_RATING] == 3.0


def test_users_without_ratings_give_rows_without_them():
    users = rated_users().drop_columns([schema.RATINGS])
    spec = SplitSpec(split="loo", max_len=3, window_stride=1, min_user_events=2)
    for which in schema.SPLITS:
        rows = split_rows(users, spec, which)
        assert schema.RATINGS not in rows.column_names
        assert schema.TARGET_RATING not in rows.column_names
