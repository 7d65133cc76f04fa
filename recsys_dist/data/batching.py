"""Rows of the sequence dataset → the padded arrays the model takes.

One place builds model inputs for training, evaluation, batch scoring and online serving, so
the four can never disagree on padding, masking or time buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_dist import schema
from recsys_dist.data.masking import (
    append_mask_for_prediction,
    mask_for_training,
    pad_left,
    shift_for_next_item,
)
from recsys_dist.data.time_gaps import event_age_buckets, time_gap_buckets


@dataclass(frozen=True)
class ModelInputs:
    """Left-padded model inputs; ``labels`` only for training (-100 where not masked),
    ``age_buckets`` only for a model with ``use_event_ages``."""

    items: np.ndarray  # [B, L] int64
    time_buckets: np.ndarray  # [B, L] int64
    labels: np.ndarray | None = None  # [B, L] int64
    age_buckets: np.ndarray | None = None  # [B, L, L] int64


def training_inputs(
    batch: dict[str, np.ndarray],
    max_len: int,
    num_time_buckets: int,
    objective: str,
    rng: np.random.Generator,
    mask_prob: float,
    last_item_mask_prob: float,
    event_ages: bool = False,
) -> ModelInputs:
    """Inputs and labels for a batch of training windows: cloze-masked, or shifted so that
    every event predicts the next (``objective="causal"``; ``rng`` and the masking
    probabilities are then unused, and the inputs are one column shorter). With
    ``event_ages``, each event's age as seen from every position, shifted alike."""
    items = pad_left(list(batch[schema.ITEMS]), max_len)
    times = pad_left(list(batch[schema.TIMESTAMPS]), max_len, pad=0)
    buckets = time_gap_buckets(times, items, num_time_buckets)
    ages = event_age_buckets(times, items, num_time_buckets) if event_ages else None
    if objective == "causal":
        inputs, buckets, labels = shift_for_next_item(items, buckets)
        # Position t predicts event t + 1: it sees events .. t, aged at event t + 1's time.
        return ModelInputs(inputs, buckets, labels, None if ages is None else ages[:, 1:, :-1])
    inputs, labels = mask_for_training(items, rng, mask_prob, last_item_mask_prob)
    return ModelInputs(inputs, buckets, labels, ages)


def prediction_inputs(
    histories: list[np.ndarray],
    timestamps: list[np.ndarray],
    query_times: np.ndarray,
    max_len: int,
    num_time_buckets: int,
    event_ages: bool = False,
) -> ModelInputs:
    """Histories with [MASK] appended at ``query_times``: the model predicts the next item."""
    items, times = append_mask_for_prediction(histories, timestamps, query_times, max_len)
    buckets = time_gap_buckets(times, items, num_time_buckets)
    ages = event_age_buckets(times, items, num_time_buckets) if event_ages else None
    return ModelInputs(items, buckets, age_buckets=ages)


def evaluation_inputs(
    batch: dict[str, np.ndarray], max_len: int, num_time_buckets: int, event_ages: bool = False
) -> ModelInputs:
    """Inputs for validation/test rows: predict the target at the target's own time."""
    return prediction_inputs(
        list(batch[schema.ITEMS]),
        list(batch[schema.TIMESTAMPS]),
        np.asarray(batch[schema.TARGET_TIMESTAMP], np.int64),
        max_len,
        num_time_buckets,
        event_ages,
    )
