"""Windows, trajectories and profiles of one user."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_dist.config import InterestConfig
from recsys_dist.interests.profiles import (
    decayed_profile,
    normalise,
    profile,
    trajectory,
    window_ids,
)

DAY = 86_400
MONDAY = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday


def test_event_windows_cut_every_n_events_back_from_the_newest():
    ids = window_ids(np.arange(23), InterestConfig(window="events", window_size=10))
    assert ids.tolist() == [0] * 3 + [1] * 10 + [2] * 10


@pytest.mark.parametrize(
    ("window", "times", "expected"),
    [
        ("day", [MONDAY, MONDAY + DAY - 1, MONDAY + DAY], [0, 0, 1]),
        ("week", [MONDAY - 1, MONDAY, MONDAY + 6 * DAY, MONDAY + 7 * DAY], [0, 1, 1, 2]),
        ("month", [MONDAY - 1, MONDAY, MONDAY + 30 * DAY, MONDAY + 31 * DAY], [0, 1, 1, 2]),
    ],
)
def test_calendar_windows_follow_the_utc_calendar(window, times, expected):
    ids = window_ids(np.asarray(times), InterestConfig(window=window, window_size=1))
    assert (ids - ids[0]).tolist() == expected


def test_trajectory_has_one_profile_per_non_empty_window():
    weights = np.eye(3)[[0, 0, 1, 1, 2, 0, 0]].astype(np.float32)
    times = np.asarray([0, 1, 2, 3 * DAY, 3 * DAY + 1, 9 * DAY, 9 * DAY + 5]) + MONDAY
    path = trajectory(weights, times, InterestConfig(window="day", window_size=1))
    assert path.counts.tolist() == [3, 2, 2]  # day 0, day 3, day 9 (empty days skipped)
    assert path.first_event.tolist() == [0, 3, 5]
    assert path.starts.tolist() == times[[0, 3, 5]].tolist()
    assert np.allclose(path.profiles, [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [1, 0, 0]])


def test_profiles_weigh_events_as_documented():
    weights = np.eye(2)[[0, 0, 0, 1]]
    assert np.allclose(profile(weights), [0.75, 0.25])
    # half-life 1: the newest event weighs 1, the next 1/2, 1/4, 1/8.
    assert np.allclose(decayed_profile(weights, 1.0), np.array([7 / 8, 1]) / (15 / 8))
    assert np.allclose(normalise(np.zeros((2, 3))), 0)  # no known item: no profile, no NaN
