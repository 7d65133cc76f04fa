"""Per-user sequences → training windows and evaluation rows, without leaking the future.

Pure array functions over a block of users (grouping itself is :mod:`recsys_dist.data.grouping`).
A prepared dataset stores each user's sequence once; training windows and evaluation rows are
cut from it when they are read (:mod:`recsys_dist.data.prepared`), so nothing is stored five
times over and a split costs no preparation time. Two split protocols:

* ``loo`` (leave-one-out): a user's last event is the test target, the second-last the
  validation target; training sees everything before the validation target. With
  ``holdout_events=N`` it is leave-N-out: the last N events are the test future (the row's
  target is its first event), the N before them the validation future, and training sees
  everything before those — so every user has a held-out future *window*, which interest
  forecasts are scored on.
* ``time``: two global cut times; training sees events before the validation cut, a validation
  row predicts a user's first event in [valid_cut, test_cut) from the events before
  valid_cut, a test row the first event after test_cut from the events before it.

Every history fed to the model ends strictly before its target, so no split leaks the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_dist import schema

# Rows of users that carry ratings keep them: each window's, and the held-out event's.
RATED_SEQUENCE_SCHEMA = schema.SEQUENCE_SCHEMA.append(
    pa.field(schema.RATINGS, pa.list_(pa.float32()), nullable=False)
)
_TARGET_RATING_FIELD = pa.field(schema.TARGET_RATING, pa.float32(), nullable=False)


@dataclass(frozen=True)
class SplitSpec:
    """What the split functions need: the protocol, lengths and (time split) the cut times."""

    split: str
    max_len: int
    window_stride: int
    min_user_events: int
    valid_cut: int = 0  # time split only: first second of the validation period
    test_cut: int = 0  # time split only: first second of the test period
    holdout_events: int = 1  # loo only: events held out per user for test, as many for valid


def split_rows(users: pa.Table, spec: SplitSpec, which: str) -> pa.Table:
    """The rows of split ``which`` (train, valid or test) cut from a block of users."""
    if which == schema.TRAIN_SPLIT:
        return training_rows(users, spec)
    if which in (schema.VALID_SPLIT, schema.TEST_SPLIT):
        return evaluation_rows(users, spec, which)
    raise ValueError(f"split must be one of {schema.SPLITS}, got {which!r}")


def split_counts(users: pa.Table, spec: SplitSpec) -> dict[str, int]:
    """Rows every split would have, counted without building them."""
    lists = _Lists.of(users)
    enough = lists.lengths >= spec.min_user_events
    ends = np.where(enough, _train_ends(lists, spec), 0)
    counts = {schema.TRAIN_SPLIT: int(_window_counts(ends, spec.max_len, spec.window_stride).sum())}
    for which in (schema.VALID_SPLIT, schema.TEST_SPLIT):
        counts[which] = int((enough & (_target_positions(lists, spec, which) >= 1)).sum())
    return counts


def training_rows(users: pa.Table, spec: SplitSpec) -> pa.Table:
    """Training windows of at most ``max_len`` events from each user's training history.

    ``users`` holds ``user_id``, ``items`` and ``timestamps`` lists; every window is cut out
    with array arithmetic (no Python loop per user), so millions of users stay cheap.
    """
    lists = _Lists.of(users)
    ends = np.where(lists.lengths >= spec.min_user_events, _train_ends(lists, spec), 0)
    starts, stops, owner = _windows(ends, spec.max_len, spec.window_stride)
    return lists.slices(owner, starts, stops)


def evaluation_rows(users: pa.Table, spec: SplitSpec, which: str) -> pa.Table:
    """One row per user with a target in the ``which`` split: history before it and the target.

    The history keeps up to ``max_history`` events (not just ``max_len``) so evaluation can
    exclude every item the user has already seen.
    """
    lists = _Lists.of(users)
    target = _target_positions(lists, spec, which)
    owner = np.flatnonzero((lists.lengths >= spec.min_user_events) & (target >= 1))
    table = lists.slices(owner, np.zeros(len(owner), np.int64), target[owner])
    at = lists.offsets[owner] + target[owner]
    table = table.append_column(
        schema.EVAL_SEQUENCE_SCHEMA.field(schema.TARGET_ITEM), pa.array(lists.items[at])
    ).append_column(
        schema.EVAL_SEQUENCE_SCHEMA.field(schema.TARGET_TIMESTAMP), pa.array(lists.times[at])
    )
    if lists.ratings is None:
        return table
    return table.append_column(_TARGET_RATING_FIELD, pa.array(lists.ratings[at]))


def _windows(ends: np.ndarray, max_len: int, stride: int):
    """Windows covering every user's ``[0, end)``: (starts, stops, owning user).

    The newest window ends at ``end``, then one every ``stride`` events back; a history no
    longer than ``max_len`` is one window, and a single event has nothing to predict from.
    """
    ends = np.asarray(ends, np.int64)
    count = _window_counts(ends, max_len, stride)
    owner = np.repeat(np.arange(len(ends)), count)
    step = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    stops = ends[owner] - step * stride
    return np.maximum(0, stops - max_len), stops, owner


def _window_counts(ends: np.ndarray, max_len: int, stride: int) -> np.ndarray:
    ends = np.asarray(ends, np.int64)
    return np.where(ends <= 1, 0, np.where(ends <= max_len, 1, (ends - max_len) // stride + 1))


@dataclass(frozen=True)
class _Lists:
    """The flat arrays behind a users table's list columns."""

    users: pa.Array
    offsets: np.ndarray  # [users + 1]
    lengths: np.ndarray  # [users]
    items: np.ndarray  # [events] int32
    times: np.ndarray  # [events] int64
    ratings: np.ndarray | None  # [events] float32, NaN where unrated; None: no ratings column

    @classmethod
    def of(cls, users: pa.Table) -> _Lists:
        items = users.column(schema.ITEMS).combine_chunks()
        times = users.column(schema.TIMESTAMPS).combine_chunks()
        offsets = np.asarray(items.offsets, np.int64)
        base, end = offsets[0], offsets[-1]
        ratings = None
        if schema.RATINGS in users.column_names:
            values = users.column(schema.RATINGS).combine_chunks().values
            ratings = pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)[base:end]
        return cls(
            users.column(schema.USER_ID).combine_chunks(),
            offsets - base,
            np.diff(offsets),
            np.asarray(items.values, np.int32)[base:end],
            np.asarray(times.values, np.int64)[base:end],
            None if ratings is None else ratings.astype(np.float32),
        )

    def owner_of_events(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def slices(self, owner, starts, stops) -> pa.Table:
        """Rows ``user, items[start:stop], timestamps[start:stop]`` (and ``ratings[start:stop]``
        where the users have ratings), one per window."""
        lengths = stops - starts
        out_offsets = np.r_[0, np.cumsum(lengths)]
        flat = np.repeat(self.offsets[owner] + starts - out_offsets[:-1], lengths)
        flat += np.arange(int(out_offsets[-1]))
        offsets = pa.array(out_offsets.astype(np.int32))
        columns = [
            self.users.take(pa.array(owner, pa.int64())),
            pa.ListArray.from_arrays(offsets, pa.array(self.items[flat])),
            pa.ListArray.from_arrays(offsets, pa.array(self.times[flat])),
        ]
        if self.ratings is None:
            return pa.table(columns, schema=schema.SEQUENCE_SCHEMA)
        columns.append(pa.ListArray.from_arrays(offsets, pa.array(self.ratings[flat])))
        return pa.table(columns, schema=RATED_SEQUENCE_SCHEMA)


def _train_ends(lists: _Lists, spec: SplitSpec) -> np.ndarray:
    if spec.split == "loo":
        return np.maximum(0, lists.lengths - 2 * spec.holdout_events)
    return _count_before(lists, spec.valid_cut)


def _count_before(lists: _Lists, cut: int) -> np.ndarray:
    """Per user: events strictly before ``cut`` (each user's times are sorted)."""
    early = lists.owner_of_events()[lists.times < cut]
    return np.bincount(early, minlength=len(lists.lengths))


def held_out_start(lengths, spec: SplitSpec, which: str):
    """``loo``: where the ``which`` future starts in sequences of ``lengths`` events (an int or
    an array; below 1 where a user is too short to have one)."""
    return lengths - spec.holdout_events * (2 if which == schema.VALID_SPLIT else 1)


def _target_positions(lists: _Lists, spec: SplitSpec, which: str) -> np.ndarray:
    """Per user: the position of the ``which`` target, or -1 where the user has none."""
    if spec.split == "loo":
        return held_out_start(lists.lengths, spec, which)
    start, stop = (
        (spec.valid_cut, spec.test_cut) if which == schema.VALID_SPLIT else (spec.test_cut, None)
    )
    position = _count_before(lists, start)
    has_next = position < lists.lengths
    at = lists.offsets[:-1] + np.minimum(position, np.maximum(lists.lengths - 1, 0))
    if stop is not None:
        has_next &= lists.times[np.minimum(at, max(len(lists.times) - 1, 0))] < stop
    return np.where(has_next, position, -1)


TIME_BINS = 1 << 12


def _shift_for(shift: int, low: int, high: int) -> int:
    """The smallest bin width (a power of two, at least ``2**shift``) that fits ``[low, high]``."""
    while (high >> shift) - (low >> shift) >= TIME_BINS:
        shift += 1
    return shift


@dataclass(frozen=True)
class TimeHistogram:
    """Event counts in bins of ``2**shift`` seconds, bin ``first`` being ``[first << shift, …)``.

    Bins are aligned to powers of two, so histograms of different files (or of an earlier
    dataset and an appended partition) merge exactly: the finer one is coarsened to the other's
    width. Widths grow until the whole span fits :data:`TIME_BINS` bins, a resolution of
    about span / 4,096 whatever the log, and small enough to keep in the manifest.
    """

    shift: int
    first: int
    counts: np.ndarray  # int64 [bins]

    @classmethod
    def empty(cls) -> TimeHistogram:
        return cls(0, 0, np.zeros(0, np.int64))

    @classmethod
    def of(cls, times: np.ndarray) -> TimeHistogram:
        times = np.asarray(times, np.int64)
        if not len(times):
            return cls.empty()
        low, high = int(times.min()), int(times.max())
        shift = _shift_for(0, low, high)
        first = low >> shift
        return cls(shift, first, np.bincount((times >> shift) - first).astype(np.int64))

    def merge(self, other: TimeHistogram) -> TimeHistogram:
        if not len(other.counts):
            return self
        if not len(self.counts):
            return other
        low = min(self.first << self.shift, other.first << other.shift)
        high = max(self.last_second, other.last_second)
        shift = _shift_for(max(self.shift, other.shift), low, high)
        first = low >> shift
        counts = np.zeros((high >> shift) - first + 1, np.int64)
        for part in (self, other):
            bins = ((np.arange(len(part.counts)) + part.first) << part.shift >> shift) - first
            np.add.at(counts, bins, part.counts)
        return TimeHistogram(shift, first, counts)

    @property
    def last_second(self) -> int:
        return ((self.first + len(self.counts)) << self.shift) - 1

    def cuts(self, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
        """Cut times such that about ``test_fraction`` of events fall at or after the test cut
        and ``valid_fraction`` between the cuts; each cut is a bin edge."""
        cumulative = np.cumsum(self.counts) / max(1, self.counts.sum())
        valid_bin = int(np.searchsorted(cumulative, 1 - valid_fraction - test_fraction))
        test_bin = int(np.searchsorted(cumulative, 1 - test_fraction))
        valid_cut = (self.first + valid_bin + 1) << self.shift
        test_cut = (self.first + test_bin + 1) << self.shift
        return valid_cut, max(test_cut, valid_cut + 1)

    def to_dict(self) -> dict:
        """Non-empty bins only: small enough for the manifest."""
        nonzero = np.flatnonzero(self.counts)
        return {
            "shift": self.shift,
            "first": self.first,
            "bins": nonzero.tolist(),
            "counts": self.counts[nonzero].tolist(),
        }

    @classmethod
    def from_dict(cls, stored: dict) -> TimeHistogram:
        if not stored["bins"]:
            return cls.empty()
        counts = np.zeros(stored["bins"][-1] + 1, np.int64)
        counts[stored["bins"]] = stored["counts"]
        return cls(stored["shift"], stored["first"], counts)
