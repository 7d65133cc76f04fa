"""sequences: the mergeable time histogram behind the time split's cut times."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist.data.sequences import TIME_BINS, TimeHistogram


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
