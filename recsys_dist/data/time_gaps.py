"""Log-bucketed time gaps between consecutive events, the model's sense of "how long ago".

Interests drift: an item watched a minute after the previous one says something different from
one watched a month later. The gap to the previous event is bucketed on a log2 scale (seconds
to years fit in ~30 buckets) and embedded beside the item, so the model sees sessions and
breaks. Pure numpy so that training collate, batch inference and online serving share it.
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
    timestamps = np.asarray(timestamps)
    items = np.asarray(items)
    if items.ndim != 2 or timestamps.shape != items.shape:
        raise ValueError(
            f"timestamps {timestamps.shape} and items {items.shape} must be equal 2-D [B, L] shapes"
        )
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    real = items != PAD_INDEX  # [B, L]
    prev = _previous_real_position(real)  # [B, L], -1 where there is none
    has_prev = real & (prev >= 0)  # [B, L]
    times = timestamps.astype(np.int64)
    prev_times = np.take_along_axis(times, np.maximum(prev, 0), axis=1)  # [B, L]
    gaps = np.maximum(times - prev_times, 0)  # [B, L] seconds, >= 0
    # floor(log2(x)) for integer x >= 1, exact: frexp gives x = m * 2**e with m in [0.5, 1).
    _, exponent = np.frexp((gaps + 1).astype(np.float64))
    buckets = 1 + np.minimum(exponent.astype(np.int64) - 1, num_buckets - 2)  # [B, L]
    return np.where(has_prev, buckets, 0).astype(np.int64)


def _previous_real_position(real: np.ndarray) -> np.ndarray:
    """For each position, the index of the closest real position strictly before it (or -1)."""
    batch, length = real.shape
    positions = np.where(real, np.arange(length), -1)  # [B, L]
    last_seen = np.maximum.accumulate(positions, axis=1)  # [B, L] latest real index <= i
    return np.concatenate([np.full((batch, 1), -1), last_seen[:, :-1]], axis=1)  # [B, L]
