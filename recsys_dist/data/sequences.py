"""Per-user sequences → training windows and evaluation rows, without leaking the future.

Pure array functions over a block of users (grouping itself is :mod:`recsys_dist.data.grouping`),
applied by :mod:`recsys_dist.data.prepare` through Ray Data. Two split protocols:

* ``loo`` (leave-one-out): a user's last event is the test target, the second-last the
  validation target; training sees everything before the validation target.
* ``time``: two global cut times; training sees events before the validation cut, a validation
  row predicts a user's first event in [valid_cut, test_cut) from the events before
  valid_cut, a test row the first event after test_cut from the events before it.

Every history fed to the model ends strictly before its target, so no split leaks the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys_dist import schema


@dataclass(frozen=True)
class SplitSpec:
    """What the split functions need: the protocol, lengths and (time split) the cut times."""

    split: str
    max_len: int
    window_stride: int
    min_user_events: int
    valid_cut: int = 0  # time split only: first second of the validation period
    test_cut: int = 0  # time split only: first second of the test period


def training_rows(users: pa.Table, spec: SplitSpec) -> pa.Table:
    """Training windows of at most ``max_len`` events from each user's training history.

    ``users`` holds ``user_id``, ``items`` and ``timestamps`` lists; every window is cut out
    with array arithmetic (no Python loop per user), so millions of users stay cheap.
    """
    lists = _Lists.of(users)
    ends = np.where(lists.lengths >= spec.min_user_events, _train_ends(lists, spec), 0)
    starts, stops, owner = _windows(ends, spec.max_len, spec.window_stride)
    return lists.slices(owner, starts, stops, schema.SEQUENCE_SCHEMA)


def evaluation_rows(users: pa.Table, spec: SplitSpec, which: str) -> pa.Table:
    """One row per user with a target in the ``which`` split: history before it and the target.

    The history keeps up to ``max_history`` events (not just ``max_len``) so evaluation can
    exclude every item the user has already seen.
    """
    lists = _Lists.of(users)
    target = _target_positions(lists, spec, which)
    owner = np.flatnonzero((lists.lengths >= spec.min_user_events) & (target >= 1))
    table = lists.slices(
        owner, np.zeros(len(owner), np.int64), target[owner], schema.SEQUENCE_SCHEMA
    )
    at = lists.offsets[owner] + target[owner]
    return table.append_column(
        schema.EVAL_SEQUENCE_SCHEMA.field(schema.TARGET_ITEM), pa.array(lists.items[at])
    ).append_column(
        schema.EVAL_SEQUENCE_SCHEMA.field(schema.TARGET_TIMESTAMP), pa.array(lists.times[at])
    )


def _windows(ends: np.ndarray, max_len: int, stride: int):
    """Windows covering every user's ``[0, end)``: (starts, stops, owning user).

    The newest window ends at ``end``, then one every ``stride`` events back; a history no
    longer than ``max_len`` is one window, and a single event has nothing to predict from.
    """
    ends = np.asarray(ends, np.int64)
    count = np.where(ends <= 1, 0, np.where(ends <= max_len, 1, (ends - max_len) // stride + 1))
    owner = np.repeat(np.arange(len(ends)), count)
    step = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    stops = ends[owner] - step * stride
    return np.maximum(0, stops - max_len), stops, owner


@dataclass(frozen=True)
class _Lists:
    """The flat arrays behind a users table's list columns."""

    users: pa.Array
    offsets: np.ndarray  # [users + 1]
    lengths: np.ndarray  # [users]
    items: np.ndarray  # [events] int32
    times: np.ndarray  # [events] int64

    @classmethod
    def of(cls, users: pa.Table) -> _Lists:
        items = users.column(schema.ITEMS).combine_chunks()
        times = users.column(schema.TIMESTAMPS).combine_chunks()
        offsets = np.asarray(items.offsets, np.int64)
        base = offsets[0]
        return cls(
            users.column(schema.USER_ID).combine_chunks(),
            offsets - base,
            np.diff(offsets),
            np.asarray(items.values, np.int32)[base : offsets[-1]],
            np.asarray(times.values, np.int64)[base : offsets[-1]],
        )

    def owner_of_events(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def slices(self, owner, starts, stops, table_schema: pa.Schema) -> pa.Table:
        """Rows ``user, items[start:stop], timestamps[start:stop]``, one per window."""
        lengths = stops - starts
        out_offsets = np.r_[0, np.cumsum(lengths)]
        flat = np.repeat(self.offsets[owner] + starts - out_offsets[:-1], lengths)
        flat += np.arange(int(out_offsets[-1]))
        offsets = pa.array(out_offsets.astype(np.int32))
        return pa.table(
            [
                self.users.take(pa.array(owner, pa.int64())),
                pa.ListArray.from_arrays(offsets, pa.array(self.items[flat])),
                pa.ListArray.from_arrays(offsets, pa.array(self.times[flat])),
            ],
            schema=table_schema,
        )


def _train_ends(lists: _Lists, spec: SplitSpec) -> np.ndarray:
    if spec.split == "loo":
        return np.maximum(0, lists.lengths - 2)
    return _count_before(lists, spec.valid_cut)


def _count_before(lists: _Lists, cut: int) -> np.ndarray:
    """Per user: events strictly before ``cut`` (each user's times are sorted)."""
    early = lists.owner_of_events()[lists.times < cut]
    return np.bincount(early, minlength=len(lists.lengths))


def _target_positions(lists: _Lists, spec: SplitSpec, which: str) -> np.ndarray:
    """Per user: the position of the ``which`` target, or -1 where the user has none."""
    if spec.split == "loo":
        return lists.lengths - (2 if which == schema.VALID_SPLIT else 1)
    start, stop = (
        (spec.valid_cut, spec.test_cut) if which == schema.VALID_SPLIT else (spec.test_cut, None)
    )
    position = _count_before(lists, start)
    has_next = position < lists.lengths
    at = lists.offsets[:-1] + np.minimum(position, np.maximum(lists.lengths - 1, 0))
    if stop is not None:
        has_next &= lists.times[np.minimum(at, max(len(lists.times) - 1, 0))] < stop
    return np.where(has_next, position, -1)


def time_cuts(
    histogram: np.ndarray, edges: np.ndarray, valid_fraction: float, test_fraction: float
):
    """Cut times such that about ``test_fraction`` of events fall after the test cut and
    ``valid_fraction`` between the cuts, from a histogram of all event times."""
    cumulative = np.cumsum(histogram) / max(1, histogram.sum())
    valid_bin = int(np.searchsorted(cumulative, 1 - valid_fraction - test_fraction, side="left"))
    test_bin = int(np.searchsorted(cumulative, 1 - test_fraction, side="left"))
    valid_cut, test_cut = int(np.ceil(edges[valid_bin + 1])), int(np.ceil(edges[test_bin + 1]))
    return valid_cut, max(test_cut, valid_cut + 1)
