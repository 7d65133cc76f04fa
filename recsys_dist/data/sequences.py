"""Per-user sequences: group, order, de-duplicate, truncate, split without leaking the future.

Pure functions over Arrow/numpy batches, applied by :mod:`recsys_dist.data.prepare` through
Ray Data. Two split protocols:

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
import pyarrow.compute as pc

from recsys_dist import schema
from recsys_dist.data.events import ORDER


def build_user_sequence(events: pa.Table, max_history: int, dedup: bool) -> pa.Table:
    """One user's events (any order) → one row: time-ordered items/timestamps and counts.

    Equal timestamps keep the order of the log (file, then row), so the result does not depend
    on how Ray partitioned the data.
    """
    total = events.num_rows
    if dedup:
        events = _drop_exact_duplicates(events)
    unique = events.num_rows
    events = events.sort_by([(schema.TIMESTAMP, "ascending"), (ORDER, "ascending")])
    events = events.slice(max(0, events.num_rows - max_history))
    return pa.table(
        {
            schema.USER_ID: [events.column(schema.USER_ID)[0].as_py()],
            schema.ITEM_IDS: _one_list(events.column(schema.ITEM_ID)),
            schema.TIMESTAMPS: _one_list(events.column(schema.TIMESTAMP)),
            schema.NUM_EVENTS: [unique],
            schema.NUM_DUPLICATES: [total - unique],
        },
        schema=schema.USER_SEQUENCE_SCHEMA,
    )


def _one_list(column: pa.ChunkedArray) -> pa.ListArray:
    values = column.combine_chunks()
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def _drop_exact_duplicates(events: pa.Table) -> pa.Table:
    """Keep the first occurrence (in log order) of each (item, time, event type)."""
    keys = [schema.ITEM_ID, schema.TIMESTAMP, schema.EVENT_TYPE]
    first = events.group_by(keys, use_threads=False).aggregate([(ORDER, "min")])
    keep = pc.is_in(events.column(ORDER), value_set=first.column(f"{ORDER}_min"))
    return events.filter(keep)


@dataclass(frozen=True)
class SplitSpec:
    """What the split functions need: the protocol, lengths and (time split) the cut times."""

    split: str
    max_len: int
    window_stride: int
    min_user_events: int
    valid_cut: int = 0  # time split only: first second of the validation period
    test_cut: int = 0  # time split only: first second of the test period


def training_rows(users: dict[str, np.ndarray], spec: SplitSpec) -> dict[str, list]:
    """Training windows of at most ``max_len`` events from each user's training history."""
    out: dict[str, list] = {schema.USER_ID: [], schema.ITEMS: [], schema.TIMESTAMPS: []}
    for user, items, times in _eligible(users, spec):
        end = _train_end(times, spec)
        for start, stop in training_windows(end, spec.max_len, spec.window_stride):
            out[schema.USER_ID].append(user)
            out[schema.ITEMS].append(items[start:stop])
            out[schema.TIMESTAMPS].append(times[start:stop])
    return out


def evaluation_rows(users: dict[str, np.ndarray], spec: SplitSpec, which: str) -> dict[str, list]:
    """One row per user with a target in the ``which`` split: history before it and the target.

    The history keeps up to ``max_history`` events (not just ``max_len``) so evaluation can
    exclude every item the user has already seen.
    """
    names = (schema.USER_ID, schema.ITEMS, schema.TIMESTAMPS)
    out: dict[str, list] = {n: [] for n in (*names, schema.TARGET_ITEM, schema.TARGET_TIMESTAMP)}
    for user, items, times in _eligible(users, spec):
        target = _target_position(times, spec, which)
        if target is None or target == 0:
            continue
        for name, value in zip(names, (user, items[:target], times[:target]), strict=True):
            out[name].append(value)
        out[schema.TARGET_ITEM].append(int(items[target]))
        out[schema.TARGET_TIMESTAMP].append(int(times[target]))
    return out


def training_windows(length: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` windows covering ``[0, length)``: the newest first, then every
    ``stride`` events back; a history no longer than ``max_len`` is one window."""
    if length <= 1:
        return []  # a single event has nothing to predict from
    if length <= max_len:
        return [(0, length)]
    stops = range(length, max_len - 1, -stride)
    return [(stop - max_len, stop) for stop in stops]


def _eligible(users: dict[str, np.ndarray], spec: SplitSpec):
    for user, items, times in zip(
        users[schema.USER_ID], users[schema.ITEMS], users[schema.TIMESTAMPS], strict=True
    ):
        if len(items) >= spec.min_user_events:
            yield user, np.asarray(items, np.int32), np.asarray(times, np.int64)


def _train_end(times: np.ndarray, spec: SplitSpec) -> int:
    if spec.split == "loo":
        return max(0, len(times) - 2)
    return int(np.searchsorted(times, spec.valid_cut, side="left"))


def _target_position(times: np.ndarray, spec: SplitSpec, which: str) -> int | None:
    if spec.split == "loo":
        return len(times) - (2 if which == schema.VALID_SPLIT else 1)
    start, stop = (
        (spec.valid_cut, spec.test_cut) if which == schema.VALID_SPLIT else (spec.test_cut, None)
    )
    position = int(np.searchsorted(times, start, side="left"))
    if position >= len(times) or (stop is not None and times[position] >= stop):
        return None
    return position


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
