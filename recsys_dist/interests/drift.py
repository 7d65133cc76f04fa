"""Drift: how far a user's recent interests are from their long-term ones, and when they moved.

* The **drift score** is the Jensen–Shannon divergence (base 2, so in [0, 1]) between the
  recent and the long-term profile: symmetric, bounded and defined when one side lacks a group.
* **Change points** are found by binary segmentation of the event sequence with the
  multinomial likelihood-ratio statistic: splitting events ``[lo, hi)`` at ``t`` gains
  ``2 * sum_side sum_g n_side,g * ln(p_side,g / p_g)`` in log-likelihood over one profile for
  the whole segment. Without a change the gain at one position is about chi-square with
  ``groups seen - 1`` degrees of freedom; a split is kept when the best gain beats a tail bound
  of that distribution taken over every candidate position, so a stationary user is cut with
  probability about ``interests.false_alarm_rate`` whatever their length or breadth. Each side
  keeps at least ``min_segment`` events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_dist.config import InterestConfig
from recsys_dist.interests.profiles import normalise

TOP_MOVES = 3  # groups listed as rising or falling at a change point
MIN_MOVE = 0.05  # smallest change of share listed


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits along the last axis (0 = same, 1 = disjoint)."""
    p, q = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    m = (p + q) / 2
    return (_kl_bits(p, m) + _kl_bits(q, m)) / 2


def _kl_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    ratio = np.divide(p, q, out=np.ones_like(p), where=(p > 0) & (q > 0))
    return (p * np.log2(ratio)).sum(axis=-1)


@dataclass(frozen=True)
class ChangePoint:
    """Interests moved at event ``index`` (the first event of the new regime)."""

    index: int
    timestamp: int
    score: float  # likelihood-ratio gain over the threshold it had to beat (> 1)
    divergence: float  # JS divergence between the profiles before and after
    rose: list[tuple[int, float, float]]  # (group, share before, share after), largest rise first
    fell: list[tuple[int, float, float]]


def change_points(
    weights: np.ndarray, timestamps: np.ndarray, config: InterestConfig
) -> list[ChangePoint]:
    """Change points of one user's ``[E, G]`` event weights, oldest first."""
    cuts: list[tuple[int, float]] = []
    pending = [(0, len(weights))]
    cumulative = np.concatenate([np.zeros((1, weights.shape[1])), np.cumsum(weights, axis=0)])
    while pending and len(cuts) < config.max_change_points:
        lo, hi = pending.pop()
        found = _best_split(cumulative, lo, hi, config)
        if found is None:
            continue
        cuts.append(found)
        pending += [(lo, found[0]), (found[0], hi)]
        pending.sort(key=lambda span: span[1] - span[0])  # split the longest segment next
    return _describe(weights, np.asarray(timestamps, np.int64), sorted(cuts))


def _best_split(
    cumulative: np.ndarray, lo: int, hi: int, config: InterestConfig
) -> tuple[int, float] | None:
    """The split of ``[lo, hi)`` with the largest gain, and gain / penalty, if above 1."""
    m = config.min_segment
    if hi - lo < 2 * m:
        return None
    total = cumulative[hi] - cumulative[lo]  # [G]
    seen = int((total > 0).sum())
    if seen < 2:
        return None
    t = np.arange(lo + m, hi - m + 1)
    left = cumulative[t] - cumulative[lo]  # [T, G]
    right = total - left
    gain = 2 * (_log_likelihood(left) + _log_likelihood(right) - _log_likelihood(total[None]))
    penalty = threshold(seen - 1, len(t), config.false_alarm_rate)
    best = int(np.argmax(gain))
    if gain[best] <= penalty:
        return None
    return int(t[best]), float(gain[best] / penalty)


def threshold(dof: int, positions: int, false_alarm_rate: float) -> float:
    """The gain a split must beat: chi-square(``dof``) exceeds ``dof + 2 sqrt(dof x) + 2x``
    with probability at most ``exp(-x)`` (Laurent & Massart, 2000); ``x = ln(positions /
    rate)`` bounds the chance that *any* of the candidate positions passes by ``rate``."""
    x = np.log(positions / false_alarm_rate)
    return float(dof + 2 * np.sqrt(dof * x) + 2 * x)


def _log_likelihood(counts: np.ndarray) -> np.ndarray:
    """``sum_g n_g ln(n_g / n)`` per row: the fitted multinomial's log-likelihood."""
    n = counts.sum(axis=-1, keepdims=True)
    share = np.divide(counts, n, out=np.ones_like(counts), where=(counts > 0) & (n > 0))
    return (counts * np.log(share)).sum(axis=-1)


def _describe(
    weights: np.ndarray, timestamps: np.ndarray, cuts: list[tuple[int, float]]
) -> list[ChangePoint]:
    """Each cut with the groups that rose and fell between its neighbouring segments."""
    bounds = [0, *(index for index, _ in cuts), len(weights)]
    points = []
    for k, (index, score) in enumerate(cuts):
        before = normalise(weights[bounds[k] : index].sum(axis=0))
        after = normalise(weights[index : bounds[k + 2]].sum(axis=0))
        change = after - before
        order = np.argsort(-change, kind="stable")
        rose = [(int(g), float(before[g]), float(after[g])) for g in order if change[g] >= MIN_MOVE]
        fell = [
            (int(g), float(before[g]), float(after[g]))
            for g in order[::-1]
            if change[g] <= -MIN_MOVE
        ]
        points.append(
            ChangePoint(
                index=index,
                timestamp=int(timestamps[index]),
                score=score,
                divergence=float(js_divergence(before, after)),
                rose=rose[:TOP_MOVES],
                fell=fell[:TOP_MOVES],
            )
        )
    return points


def drift_score(weights: np.ndarray, first_of_recent: int) -> float:
    """JS divergence between the events from ``first_of_recent`` on and all events."""
    recent = normalise(weights[first_of_recent:].sum(axis=0))
    return float(js_divergence(recent, normalise(weights.sum(axis=0))))
