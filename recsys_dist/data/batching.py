"""Rows of the sequence dataset → the padded arrays the model takes.

One place builds model inputs for training, evaluation, batch scoring and online serving, so
the four can never disagree on padding, masking or time buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_dist import schema
from recsys_dist.data.masking import (
    IGNORE_INDEX,
    append_mask_for_prediction,
    mask_for_training,
    pad_left,
    shift_for_next_item,
)
from recsys_dist.data.time_gaps import event_age_buckets, time_gap_buckets


@dataclass(frozen=True)
class RatingScale:
    """How ratings enter the model: bucketed on the data's ``[low, high]`` scale as an input
    feature (bucket 0: the event has no rating, or is hidden from the model)."""

    low: float
    high: float
    num_buckets: int

    def buckets(self, ratings: np.ndarray) -> np.ndarray:
        """Ratings (NaN: none) → int64 buckets ``0 .. num_buckets``, same shape."""
        span = max(self.high - self.low, 1e-9)
        scaled = np.clip((np.nan_to_num(ratings, nan=self.low) - self.low) / span, 0.0, 1.0)
        buckets = 1 + np.rint(scaled * (self.num_buckets - 1)).astype(np.int64)
        return np.where(np.isnan(ratings), 0, buckets)


@dataclass(frozen=True)
class ModelInputs:
    """Left-padded model inputs; ``labels`` only for training (-100 where not masked),
    ``age_buckets`` only for a model with ``use_event_ages``; ``rating_buckets`` only for a
    model that reads ratings, with ``rating_labels`` (NaN where none) in training."""

    items: np.ndarray  # [B, L] int64
    time_buckets: np.ndarray  # [B, L] int64
    labels: np.ndarray | None = None  # [B, L] int64
    age_buckets: np.ndarray | None = None  # [B, L, L] int64
    rating_buckets: np.ndarray | None = None  # [B, L] int64
    rating_labels: np.ndarray | None = None  # [B, L] float32


def training_inputs(
    batch: dict[str, np.ndarray],
    max_len: int,
    num_time_buckets: int,
    objective: str,
    rng: np.random.Generator,
    mask_prob: float,
    last_item_mask_prob: float,
    event_ages: bool = False,
    rating_scale: RatingScale | None = None,
) -> ModelInputs:
    """Inputs and labels for a batch of training windows, padded to its longest row
    (:func:`batch_width`): cloze-masked, or shifted so that
    every event predicts the next (``objective="causal"``; ``rng`` and the masking
    probabilities are then unused, and the inputs are one column shorter). With
    ``event_ages``, each event's age as seen from every position, shifted alike. With
    ``rating_scale``, each event's rating as an input and the predicted event's as a label;
    a masked (cloze) event's rating is hidden, as its item is."""
    width = batch_width(batch, max_len)
    items = pad_left(list(batch[schema.ITEMS]), width)
    times = pad_left(list(batch[schema.TIMESTAMPS]), width, pad=0)
    buckets = time_gap_buckets(times, items, num_time_buckets)
    ages = event_age_buckets(times, items, num_time_buckets) if event_ages else None
    ratings = _padded_ratings(batch, width) if rating_scale is not None else None
    if objective == "causal":
        inputs, buckets, labels = shift_for_next_item(items, buckets)
        # Position t predicts event t + 1: it sees events .. t, aged at event t + 1's time.
        ages = None if ages is None else ages[:, 1:, :-1]
        if ratings is None:
            return ModelInputs(inputs, buckets, labels, ages)
        rating_labels = np.where(labels != IGNORE_INDEX, ratings[:, 1:], np.nan)
        rated = rating_scale.buckets(ratings[:, :-1])  # event t's own rating, at position t
        return ModelInputs(inputs, buckets, labels, ages, rated, rating_labels.astype(np.float32))
    inputs, labels = mask_for_training(items, rng, mask_prob, last_item_mask_prob)
    if ratings is None:
        return ModelInputs(inputs, buckets, labels, ages)
    masked = labels != IGNORE_INDEX
    rated = np.where(masked, 0, rating_scale.buckets(ratings))
    rating_labels = np.where(masked, ratings, np.nan).astype(np.float32)
    return ModelInputs(inputs, buckets, labels, ages, rated, rating_labels)


def batch_width(batch: dict[str, np.ndarray], max_len: int) -> int:
    """Columns a training batch is padded to: its longest row's events (:func:`padded_width`)."""
    return padded_width(max((len(items) for items in batch[schema.ITEMS]), default=0), max_len)


def padded_width(longest: int, max_len: int) -> int:
    """Columns inputs whose longest row has ``longest`` positions are padded to: that many, at
    most ``max_len``, two at least (a causal model reads one position before its last).

    Position ids are right-aligned (the newest event always sits at ``max_len - 1``), so a
    narrower batch means the same to the model and only skips the padding's work."""
    return min(max_len, max(2, longest))


def _padded_ratings(batch: dict[str, np.ndarray], width: int) -> np.ndarray:
    """``[B, width]`` float32 ratings, NaN where unrated or padded (rows without a ratings
    column, e.g. a placeholder batch, are all unrated)."""
    if schema.RATINGS not in batch:
        rows = [np.full(len(items), np.nan) for items in batch[schema.ITEMS]]
    else:
        rows = list(batch[schema.RATINGS])
    return pad_left(rows, width, pad=np.nan, dtype=np.float32)


def prediction_inputs(
    histories: list[np.ndarray],
    timestamps: list[np.ndarray],
    query_times: np.ndarray,
    max_len: int,
    num_time_buckets: int,
    event_ages: bool = False,
    ratings: list[np.ndarray] | None = None,
    rating_scale: RatingScale | None = None,
) -> ModelInputs:
    """Histories with [MASK] appended at ``query_times``: the model predicts the next item.
    With ``rating_scale``, the histories' ``ratings`` (NaN: none; ``None``: no event rated)
    are an input too; the MASK position's is unknown. Padded to the longest history plus
    the MASK (:func:`padded_width`): a user with five events costs six positions, not 50."""
    max_len = padded_width(1 + max((len(h) for h in histories), default=0), max_len)
    items, times = append_mask_for_prediction(histories, timestamps, query_times, max_len)
    buckets = time_gap_buckets(times, items, num_time_buckets)
    ages = event_age_buckets(times, items, num_time_buckets) if event_ages else None
    if rating_scale is None:
        return ModelInputs(items, buckets, age_buckets=ages)
    if ratings is None:
        ratings = [np.full(len(h), np.nan) for h in histories]
    rows = [np.append(np.asarray(r, np.float32)[-(max_len - 1) :], np.nan) for r in ratings]
    rated = rating_scale.buckets(pad_left(rows, max_len, pad=np.nan, dtype=np.float32))
    return ModelInputs(items, buckets, age_buckets=ages, rating_buckets=rated)


def evaluation_inputs(
    batch: dict[str, np.ndarray],
    max_len: int,
    num_time_buckets: int,
    event_ages: bool = False,
    rating_scale: RatingScale | None = None,
) -> ModelInputs:
    """Inputs for validation/test rows: predict the target at the target's own time."""
    ratings = batch.get(schema.RATINGS)
    return prediction_inputs(
        list(batch[schema.ITEMS]),
        list(batch[schema.TIMESTAMPS]),
        np.asarray(batch[schema.TARGET_TIMESTAMP], np.int64),
        max_len,
        num_time_buckets,
        event_ages,
        None if ratings is None else list(ratings),
        rating_scale,
    )
