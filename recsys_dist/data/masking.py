"""Padding, cloze masking and next-item targets of item sequences, as functions of their own.

Masking decides what the model learns, so it lives here, explicit and seeded, rather than
inside the model or a mutated config (Transformers4Rec's ``masking.py`` does the same). All
sequences are LEFT-padded: the most recent event is the last column, which is where inference
puts MASK, so training that sometimes masks only the last position matches serving.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsys_dist.schema import MASK_INDEX, PAD_INDEX

IGNORE_INDEX = -100  # label of unmasked positions; torch's cross-entropy skips it


def pad_left(
    sequences: Sequence[np.ndarray] | np.ndarray,
    length: int,
    pad: int = PAD_INDEX,
    dtype: np.dtype | type = np.int64,
) -> np.ndarray:
    """Stack 1-D sequences into ``[B, length]``, right-aligned and left-padded with ``pad``.

    Longer sequences keep their LAST ``length`` elements: the recent past matters most.
    """
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    out = np.full((len(sequences), length), pad, dtype=dtype)  # [B, length]
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq)[-length:]
        if tail.ndim != 1:
            raise ValueError(f"sequence {row} must be 1-D, got shape {np.shape(seq)}")
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def mask_for_training(
    items: np.ndarray,
    rng: np.random.Generator,
    mask_prob: float,
    last_item_mask_prob: float,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT4Rec cloze masking of a ``[B, L]`` batch.

    Each real (non-PAD) position is replaced by MASK with probability ``mask_prob``. With
    probability ``last_item_mask_prob`` a row instead masks ONLY its final real position — the
    pattern the model sees at inference. A non-empty row with nothing masked gets one random
    real position masked, so every row contributes to the loss. PAD is never masked.

    Args:
        items: ``[B, L]`` left-padded item indices.
        rng: Source of randomness; the result is a pure function of its state and ``items``.
        mask_prob: Per-position masking probability, in ``[0, 1)``.
        last_item_mask_prob: Per-row probability of last-item-only masking, in ``[0, 1]``.

    Returns:
        ``(inputs, labels)``, both ``[B, L]`` int64: inputs with MASK at masked positions;
        labels with the original item there and ``-100`` elsewhere.
    """
    items = np.asarray(items)
    if items.ndim != 2:
        raise ValueError(f"items must be 2-D [B, L], got shape {items.shape}")
    if not 0 <= mask_prob < 1 or not 0 <= last_item_mask_prob <= 1:
        raise ValueError(
            f"mask_prob={mask_prob} must be in [0, 1), last_item_mask_prob={last_item_mask_prob} "
            "in [0, 1]"
        )
    batch, length = items.shape
    real = items != PAD_INDEX  # [B, L]
    # Draw every random number up front so the stream consumed never depends on the data.
    position_draws = rng.random((batch, length))  # [B, L]
    last_only = rng.random(batch) < last_item_mask_prob  # [B]
    fallback_draws = rng.random(batch)  # [B]

    masked = real & (position_draws < mask_prob)  # [B, L]
    masked[last_only] = _last_real_position(real[last_only])
    empty = ~masked.any(axis=1)  # [B]
    masked[empty] = _random_real_position(real[empty], fallback_draws[empty])

    inputs = np.where(masked, MASK_INDEX, items).astype(np.int64)  # [B, L]
    labels = np.where(masked, items, IGNORE_INDEX).astype(np.int64)  # [B, L]
    return inputs, labels


def shift_for_next_item(
    items: np.ndarray, time_buckets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal training inputs of a ``[B, L]`` batch: every event predicts the one after it.

    Position t of the result holds event t and the time-gap bucket of event t + 1 (the gap
    from event t to the event it predicts), and is labelled with event t + 1. At inference
    the same shift of ``append_mask_for_prediction``'s output gives the last event with the
    gap to the query time: the model is told when it is asked, as in training.

    Args:
        items: ``[B, L]`` left-padded item indices.
        time_buckets: ``[B, L]`` buckets of the gap from each event to the one before it.

    Returns:
        ``(items, time_buckets, labels)``, each ``[B, L - 1]`` int64; labels are ``-100``
        where the input is PAD (nothing precedes the target there).
    """
    items = np.asarray(items)
    if items.ndim != 2 or items.shape[1] < 2 or np.shape(time_buckets) != items.shape:
        raise ValueError(
            f"items must be [B, L] with L >= 2 and time_buckets alike, got {items.shape} "
            f"and {np.shape(time_buckets)}"
        )
    inputs = items[:, :-1].astype(np.int64)  # [B, L - 1]
    labels = np.where(inputs != PAD_INDEX, items[:, 1:], IGNORE_INDEX).astype(np.int64)
    return inputs, np.asarray(time_buckets)[:, 1:].astype(np.int64), labels


def _last_real_position(real: np.ndarray) -> np.ndarray:
    """``[R, L]`` one-hot of each row's last real position (all False for an empty row)."""
    reversed_first = np.argmax(real[:, ::-1], axis=1)  # [R]
    last = real.shape[1] - 1 - reversed_first  # [R]
    one_hot = np.arange(real.shape[1]) == last[:, None]  # [R, L]
    return one_hot & real


def _random_real_position(real: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``[R, L]`` one-hot of a uniformly chosen real position per row, from ``draws`` in [0, 1)."""
    counts = real.sum(axis=1)  # [R]
    choice = np.floor(draws * counts).astype(np.int64)  # [R], k-th real position
    rank = np.cumsum(real, axis=1) - 1  # [R, L], index among real positions
    return real & (rank == choice[:, None])


def append_mask_for_prediction(
    items: Sequence[np.ndarray] | np.ndarray,
    timestamps: Sequence[np.ndarray] | np.ndarray,
    query_times: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Inference inputs: each history's last ``length - 1`` events followed by MASK.

    Args:
        items: ``B`` 1-D histories of item indices, oldest first.
        timestamps: ``B`` 1-D event times aligned with ``items``.
        query_times: ``[B]`` when the prediction is asked for; the MASK position's timestamp,
            so the time-gap input sees "how long since the last event".
        length: Model input length (``max_len``).

    Returns:
        ``(items, timestamps)``, both ``[B, length]`` int64, left-padded with PAD / 0.
    """
    query_times = np.asarray(query_times)
    if not len(items) == len(timestamps) == len(query_times):
        raise ValueError(
            f"got {len(items)} item histories, {len(timestamps)} timestamp histories and "
            f"{len(query_times)} query times; they must match"
        )
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    keep = length - 1
    item_rows, time_rows = [], []
    for row, (hist, times, query) in enumerate(zip(items, timestamps, query_times, strict=True)):
        hist, times = np.asarray(hist), np.asarray(times)
        if hist.shape != times.shape:
            raise ValueError(f"row {row}: items {hist.shape} and timestamps {times.shape} differ")
        start = max(len(hist) - keep, 0)
        item_rows.append(np.append(hist[start:], MASK_INDEX))
        time_rows.append(np.append(times[start:], query))
    return pad_left(item_rows, length), pad_left(time_rows, length, pad=0)
