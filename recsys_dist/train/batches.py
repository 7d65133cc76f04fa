"""Batches of a worker's dataset shard: streamed from Ray Data, replayed from memory if small.

Every epoch of ``iter_batches`` restarts Ray Data's streaming execution, which costs seconds
of fixed overhead: negligible for a large shard, but most of an epoch for a small one (ml-100k
trains in a few seconds per epoch). A shard of at most ``cache_rows`` rows is therefore kept
in memory after its first streamed pass and reshuffled in full each epoch; larger shards are
streamed every epoch with a local shuffle buffer, so memory stays bounded.

Shards of the training split differ in size (no row is dropped to equalise them), so the
ranks must also agree on when to replay: see :class:`ShardBatches`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import numpy as np

from recsys_dist import schema

_SHUFFLE_BUFFER_ROWS = 8192

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
    """

    def __init__(
        self,
        shard,
        batch_size: int,
        cache_rows: int,
        shuffle: bool,
        agree: Callable[[bool], bool] = lambda fits: fits,
    ) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.cache_rows = cache_rows
        self.shuffle = shuffle
        self.agree = agree
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
        for batch in self.shard.iter_batches(
            batch_size=self.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=_SHUFFLE_BUFFER_ROWS if self.shuffle else None,
            local_shuffle_seed=seed if self.shuffle else None,
        ):
            rows += len(next(iter(batch.values())))
            if kept is not None:
                kept = kept + [batch] if rows <= self.cache_rows else None
            yield batch
        if kept is not None:  # an empty shard fits too: it replays as no batches
            self._kept = (
                {name: np.concatenate([b[name] for b in kept]) for name in kept[0]} if kept else {}
            )
        self._streamed = True

    def _replay(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        rows = len(next(iter(self.cached.values()), ()))
        order = np.random.default_rng(seed).permutation(rows) if self.shuffle else np.arange(rows)
        for start in range(0, rows, self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield {name: column[chosen] for name, column in self.cached.items()}


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
