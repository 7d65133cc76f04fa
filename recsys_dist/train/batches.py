"""Batches of a worker's dataset shard: streamed from Ray Data, replayed from memory if small.

Every epoch of ``iter_batches`` restarts Ray Data's streaming execution, which costs seconds
of fixed overhead: negligible for a large shard, but most of an epoch for a small one (ml-100k
trains in a few seconds per epoch). A shard of at most ``cache_rows`` rows is therefore kept
in memory after its first streamed pass and reshuffled in full each epoch; larger shards are
streamed every epoch with a local shuffle buffer, so memory stays bounded.

Shards of the training split differ in size (no row is dropped to equalise them), so the
ranks must also agree on when to replay: see :class:`ShardBatches`.

Training batches are grouped by length (``train.group_by_length``): every batch is padded to
its longest row, and on sparse logs a random batch of 128 almost always holds one long history
(Amazon Beauty: median 4 events, but a random batch's longest averages 45 of 50), so most of
the encoder's work is padding. :func:`length_grouped` sorts each run of rows by length before
cutting it into batches (as HF ``transformers``' ``group_by_length`` and fairseq's token
batches do), which leaves 14 % of the padded positions on Beauty.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from recsys_dist import schema

_SHUFFLE_BUFFER_ROWS = 8192
# Rows are sorted by length within runs of this many batches' worth: long enough that similar
# lengths meet, short enough that a batch's rows still come from across the epoch.
GROUP_BATCHES = 50

CHECKSUM_MODULUS = 2**61 - 1  # a Mersenne prime: sums of crc32 values stay exact in int64


class ShardBatches:
    """``epoch(seed)`` yields numpy batches of one pass over the shard.

    Args:
        shard: This worker's ``DataIterator``.
        batch_size: Rows per batch.
        cache_rows: Replay the shard from memory once a streamed pass held at most this many.
        shuffle: Shuffle rows within each epoch.
        agree: Called by every rank at the start of the epoch after a streamed pass with
            "my pass fits in the cache"; must return the same answer on every rank (true only
            if it is true on all). A rank replaying while another streams would leave Ray
            Data's split waiting for it forever, and the shards would no longer cover the
            data exactly once.
        group_by_length: Batch rows of similar length together (:func:`length_grouped`):
            with ``shuffle`` (training) batches of about equal events, without (validation,
            whose order does not matter) batches of ``batch_size`` rows, as their scores are
            ``[rows x items]``.
    """

    def __init__(
        self,
        shard,
        batch_size: int,
        cache_rows: int,
        shuffle: bool,
        agree: Callable[[bool], bool] = lambda fits: fits,
        group_by_length: bool = False,
    ) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.cache_rows = cache_rows
        self.shuffle = shuffle
        self.agree = agree
        self.group_by_length = group_by_length
        self.cached: dict[str, np.ndarray] | None = None
        self._streamed = False  # a streamed pass ended and its cache is not yet settled
        self._kept: dict[str, np.ndarray] | None = None

    def epoch(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """Not a generator itself, so the cache is settled (a collective) when this is called,
        at the same point on every rank, not whenever each rank's own stream runs out."""
        if self._streamed:
            self._streamed = False
            if self.agree(self._kept is not None):
                self.cached = self._kept
            self._kept = None
        return self._replay(seed) if self.cached is not None else self._stream(seed)

    def _stream(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        kept: list[dict[str, np.ndarray]] | None = []
        rows = 0
        for batch in self._streamed_batches(seed):
            rows += len(next(iter(batch.values())))
            if kept is not None:
                kept = kept + [batch] if rows <= self.cache_rows else None
            yield batch
        if kept is not None:  # an empty shard fits too: it replays as no batches
            self._kept = (
                {name: np.concatenate([b[name] for b in kept]) for name in kept[0]} if kept else {}
            )
        self._streamed = True

    def _streamed_batches(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """Ray Data's batches, regrouped by length a run of ``GROUP_BATCHES`` at a time."""
        streamed = self.shard.iter_batches(
            batch_size=self.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=_SHUFFLE_BUFFER_ROWS if self.shuffle else None,
            local_shuffle_seed=seed if self.shuffle else None,
        )
        if not self.group_by_length:
            yield from streamed
            return
        rng, run = np.random.default_rng(seed), []
        for batch in streamed:
            run.append(batch)
            if len(run) == GROUP_BATCHES:
                yield from self._regrouped(run, rng)
                run = []
        if run:
            yield from self._regrouped(run, rng)

    def _regrouped(self, run: list[dict[str, np.ndarray]], rng: np.random.Generator):
        yield from self._grouped(
            {name: np.concatenate([b[name] for b in run]) for name in run[0]}, rng
        )

    def _grouped(self, rows: dict[str, np.ndarray], rng: np.random.Generator):
        """``rows`` in :func:`length_grouped` batches (of equal events when training)."""
        for chosen in length_grouped(_lengths(rows), self.batch_size, rng, self.shuffle):
            yield {name: column[chosen] for name, column in rows.items()}

    def _replay(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        if self.group_by_length:
            yield from self._grouped(self.cached, rng)
            return
        rows = len(next(iter(self.cached.values()), ()))
        order = rng.permutation(rows) if self.shuffle else np.arange(rows)
        for start in range(0, rows, self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield {name: column[chosen] for name, column in self.cached.items()}


def length_grouped(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, equal_events: bool = True
) -> list[np.ndarray]:
    """Row indices of one epoch's batches, rows of similar length together, in random order.

    The rows are shuffled, then each run of ``GROUP_BATCHES * batch_size`` is sorted by length
    and cut into as many batches as plain batching would make (so the schedule's step count
    holds), each of about the same number of events rather than of rows: a batch of short
    histories holds more of them, one of long histories fewer, so every step sees about as
    many labelled positions, and a batch's padded positions stay near ``batch_size`` times
    the mean length, never a whole long row per short one. Without ``equal_events`` each
    batch holds ``batch_size`` rows (all but a run's last), for work whose memory is per row.
    """
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    run_rows = GROUP_BATCHES * batch_size
    for start in range(0, len(order), run_rows):
        run = order[start : start + run_rows]
        run = run[np.argsort(lengths[run], kind="stable")]
        count = math.ceil(len(run) / batch_size)
        events = np.cumsum(lengths[run])
        cuts = np.arange(1, count) * batch_size
        if equal_events:
            cuts = np.searchsorted(events, events[-1] * cuts / len(run), side="right")
        batches.extend(chosen for chosen in np.split(run, cuts) if len(chosen))
    return [batches[i] for i in rng.permutation(len(batches))]


def _lengths(rows: dict[str, np.ndarray]) -> np.ndarray:
    """``[N]`` events of each row."""
    return np.fromiter(
        (len(items) for items in rows[schema.ITEMS]), np.int64, len(rows[schema.ITEMS])
    )


def sequence_checksum(batch: dict[str, np.ndarray]) -> int:
    """An order-independent fingerprint of a batch's training rows, in ``[0, CHECKSUM_MODULUS)``.

    The sum over rows of ``crc32("user|first timestamp|length")``: windows of one user differ
    in their first event or their length. Sums over shards add up (mod the modulus) to the
    checksum of the whole split, so a dropped or repeated row shows.
    """
    total = 0
    for user, times in zip(batch[schema.USER_ID], batch[schema.TIMESTAMPS], strict=True):
        first = int(times[0]) if len(times) else -1
        total += zlib.crc32(f"{user}|{first}|{len(times)}".encode())
    return total % CHECKSUM_MODULUS


def placeholder_batch() -> dict[str, np.ndarray]:
    """One single-event row, for a rank whose shard has run out while others still train.

    It trains with its loss multiplied by zero: no gradient, but the same collectives as a
    real step, so DeepSpeed's all-reduce does not wait forever for the missing rank.
    """
    items, times = np.empty(1, dtype=object), np.empty(1, dtype=object)
    items[0] = np.array([schema.NUM_SPECIAL_TOKENS], dtype=np.int32)
    times[0] = np.array([0], dtype=np.int64)
    return {
        schema.USER_ID: np.array([""], dtype=object),
        schema.ITEMS: items,
        schema.TIMESTAMPS: times,
    }
