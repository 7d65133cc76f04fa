"""Log-bucketed time gaps between consecutive events, the model's sense of "how long ago".

Interests drift: an item watched a minute after the previous one says something different from
one watched a month later. The gap to the previous event is bucketed on a log2 scale (seconds
to years fit in ~30 buckets) and embedded beside the item, so the model sees sessions and
breaks. Optionally (``model.use_event_ages``) every earlier event's age as seen from each
position is bucketed the same way, for a relative-time attention bias. Pure numpy so that
training collate, batch inference and online serving share it.
"""

from __future__ import annotations

import numpy as np

from recsys_dist.schema import PAD_INDEX


def time_gap_buckets(timestamps: np.ndarray, items: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket the gap from each event to the previous real event of the same row.

    Args:
        timestamps: ``[B, L]`` event times in seconds, aligned with ``items`` (values at PAD
            positions are ignored).
        items: ``[B, L]`` item indices, PAD where there is no event (usually left padding).
        num_buckets: Size of the bucket vocabulary, ``>= 2``. Bucket 0 means "no previous
            event" (PAD or first event); buckets ``1 .. num_buckets - 1`` hold
            ``1 + floor(log2(1 + gap))`` capped at ``num_buckets - 1``.

    Returns:
        ``[B, L]`` int64 buckets. Negative gaps (clock skew) count as 0 seconds.

    Raises:
        ValueError: If the arrays are not 2-D with equal shapes or ``num_buckets < 2``.
    """
    timestamps, items = _checked(timestamps, items, num_buckets)
    real = items != PAD_INDEX  # [B, L]
    prev = _previous_real_position(real)  # [B, L], -1 where there is none
    has_prev = real & (prev >= 0)  # [B, L]
    times = timestamps.astype(np.int64)
    prev_times = np.take_along_axis(times, np.maximum(prev, 0), axis=1)  # [B, L]
    gaps = times - prev_times  # [B, L] seconds
    return np.where(has_prev, _log2_buckets(gaps, num_buckets), 0).astype(np.int64)


def event_age_buckets(timestamps: np.ndarray, items: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket the age of every earlier event as seen from each position: ``[B, L, L]``.

    Entry ``[b, q, k]`` is the bucket of ``t[q] - t[k]`` for real events ``k < q``, on the same
    log2 scale as :func:`time_gap_buckets` (whose gap is entry ``[q, previous real k]``), and
    0 ("not an earlier event") for ``k >= q`` or PAD at either end. Position q's time is when
    it is asked to predict (the query time at MASK), so row q says how old each event is at
    that moment: what a relative-time attention bias needs (TiSASRec, HSTU). A causal model
    reads rows ``1 ..`` against keys ``.. L - 2``: the same shift as its gap input.

    Returns:
        ``[B, L, L]`` int64 buckets; negative ages (clock skew) count as 0 seconds.

    Raises:
        ValueError: As :func:`time_gap_buckets`.
    """
    timestamps, items = _checked(timestamps, items, num_buckets)
    real = items != PAD_INDEX  # [B, L]
    length = items.shape[1]
    earlier = np.tri(length, length, -1, dtype=bool)  # [L, L], k < q
    known = real[:, :, None] & real[:, None, :] & earlier  # [B, L, L]
    times = timestamps.astype(np.int64)
    ages = times[:, :, None] - times[:, None, :]  # [B, L, L] seconds
    return np.where(known, _log2_buckets(ages, num_buckets), 0).astype(np.int64)


def _log2_buckets(seconds: np.ndarray, num_buckets: int) -> np.ndarray:
    """``1 + floor(log2(1 + seconds))`` capped at ``num_buckets - 1``; negatives count as 0."""
    # floor(log2(x)) for integer x >= 1, exact: frexp gives x = m * 2**e with m in [0.5, 1).
    _, exponent = np.frexp((np.maximum(seconds, 0) + 1).astype(np.float64))
    return 1 + np.minimum(exponent.astype(np.int64) - 1, num_buckets - 2)


def _checked(
    timestamps: np.ndarray, items: np.ndarray, num_buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as numpy, or ``ValueError`` naming the shapes or the bucket count."""
    timestamps = np.asarray(timestamps)
    items = np.asarray(items)
    if items.ndim != 2 or timestamps.shape != items.shape:
        raise ValueError(
            f"timestamps {timestamps.shape} and items {items.shape} must be equal 2-D [B, L] shapes"
        )
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    return timestamps, items


def _previous_real_position(real: np.ndarray) -> np.ndarray:
    """For each position, the index of the closest real position strictly before it (or -1)."""
    batch, length = real.shape
    positions = np.where(real, np.arange(length), -1)  # [B, L]
    last_seen = np.maximum.accumulate(positions, axis=1)  # [B, L] latest real index <= i
    return np.concatenate([np.full((batch, 1), -1), last_seen[:, :-1]], axis=1)  # [B, L]
