"""Drift scores and change points on sequences with a known shift."""

from __future__ import annotations

import numpy as np

from recsys_dist.config import InterestConfig
from recsys_dist.interests.drift import change_points, drift_score, js_divergence


def sequence(rng, first: list[float], then: list[float], n: int, switch: int) -> np.ndarray:
    """``[n, G]`` one-hot events drawn from ``first`` before ``switch`` and ``then`` after."""
    groups = [rng.choice(len(first), p=first if i < switch else then) for i in range(n)]
    return np.eye(len(first))[groups]


def test_js_divergence_is_a_bounded_symmetric_distance():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])
    assert js_divergence(p, p) == 0
    assert np.isclose(js_divergence(p, q), js_divergence(q, p))
    assert np.isclose(js_divergence([1.0, 0.0], [0.0, 1.0]), 1.0)  # disjoint: one bit
    assert 0 < js_divergence(p, q) < 1
    rows = js_divergence(np.stack([p, q]), p[None])  # broadcasts over rows
    assert rows.shape == (2,) and rows[0] == 0


def test_an_abrupt_shift_is_found_where_it_happened_with_what_rose_and_fell():
    rng = np.random.default_rng(0)
    weights = sequence(rng, [0.8, 0.1, 0.05, 0.05], [0.05, 0.1, 0.8, 0.05], n=60, switch=35)
    times = np.arange(60) * 3_600
    found = change_points(weights, times, InterestConfig())
    assert len(found) == 1
    point = found[0]
    assert abs(point.index - 35) <= 3 and point.timestamp == times[point.index]
    assert point.rose[0][0] == 2 and point.fell[0][0] == 0  # group 2 rose, group 0 fell
    assert point.rose[0][1] < point.rose[0][2] and point.divergence > 0.3
    assert drift_score(weights, 50) > drift_score(weights[:30], 20)


def test_stationary_users_get_no_change_point():
    rng = np.random.default_rng(1)
    flagged = 0
    for _ in range(50):
        weights = sequence(rng, [0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], n=60, switch=0)
        flagged += bool(change_points(weights, np.arange(60), InterestConfig()))
    assert flagged <= 3  # the penalty keeps false alarms rare


def test_short_or_single_interest_histories_have_no_change_point():
    config = InterestConfig(min_segment=5)
    assert change_points(np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2]], np.arange(9), config) == []
    assert change_points(np.eye(3)[[1] * 40], np.arange(40), config) == []
