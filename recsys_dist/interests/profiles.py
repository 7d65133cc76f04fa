"""Interest profiles: a user's distribution over interest groups, overall and over time.

A window is either a number of consecutive events, counted back from the newest event so the
current window is always full, or a calendar period (UTC day, ISO week or month,
``window_size`` of them); the sequence of window profiles is the user's *trajectory*.
Pure numpy on one user's ``[E, G]`` event weights (:meth:`InterestGroups.of_events`), so
offline analysis, the report and the online endpoint share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_dist.config import InterestConfig

DAY_S = 86_400


@dataclass(frozen=True)
class Trajectory:
    """One profile per non-empty window, oldest first."""

    starts: np.ndarray  # [W] int64: first event time in the window
    counts: np.ndarray  # [W] int64: events in the window
    profiles: np.ndarray  # [W, G] float: each row sums to 1 (0 for windows of unknown items)
    first_event: np.ndarray  # [W] int64: index of the window's first event


def window_ids(timestamps: np.ndarray, config: InterestConfig) -> np.ndarray:
    """The window of each event: non-decreasing ints (gaps where calendar windows are empty)."""
    times = np.asarray(timestamps, np.int64)
    if config.window == "events":  # counted back from the newest: the last window is full
        period = np.arange(len(times)) + (-len(times)) % config.window_size
    elif config.window == "day":
        period = times // DAY_S
    elif config.window == "week":
        period = (times // DAY_S + 3) // 7  # 1970-01-01 was a Thursday: weeks start on Monday
    else:
        period = times.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    return period // config.window_size


def trajectory(weights: np.ndarray, timestamps: np.ndarray, config: InterestConfig) -> Trajectory:
    """Window profiles of one user (``weights``: ``[E, G]`` in time order)."""
    ids = window_ids(timestamps, config)
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
    sums = np.add.reduceat(weights, first, axis=0) if len(first) else weights[:0]
    return Trajectory(
        starts=np.asarray(timestamps, np.int64)[first],
        counts=np.diff(np.r_[first, len(ids)]),
        profiles=normalise(sums),
        first_event=first,
    )


def profile(weights: np.ndarray) -> np.ndarray:
    """The long-term profile: every event counts the same."""
    return normalise(weights.sum(axis=0))


def decayed_profile(weights: np.ndarray, half_life: float) -> np.ndarray:
    """Recent events count more: the k-th most recent weighs ``0.5 ** (k / half_life)``."""
    age = np.arange(len(weights))[::-1]
    return normalise((weights * 0.5 ** (age / half_life)[:, None]).sum(axis=0))


def normalise(counts: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; all-zero rows stay zero (no known item: no profile)."""
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts, dtype=np.float64), where=total > 0)
