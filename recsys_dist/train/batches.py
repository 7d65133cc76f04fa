"""Batches of a worker's dataset shard: streamed from Ray Data, replayed from memory if small.

Every epoch of ``iter_batches`` restarts Ray Data's streaming execution, which costs seconds
of fixed overhead: negligible for a large shard, but most of an epoch for a small one (ml-100k
trains in a few seconds per epoch). A shard of at most ``cache_rows`` rows is therefore kept
in memory after its first streamed pass and reshuffled in full each epoch; larger shards are
streamed every epoch with a local shuffle buffer, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_SHUFFLE_BUFFER_ROWS = 8192


class ShardBatches:
    """``epoch(seed)`` yields numpy batches of one pass over the shard."""

    def __init__(self, shard, batch_size: int, cache_rows: int, shuffle: bool) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.cache_rows = cache_rows
        self.shuffle = shuffle
        self.cached: dict[str, np.ndarray] | None = None

    def epoch(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        if self.cached is not None:
            yield from self._replay(seed)
        else:
            yield from self._stream(seed)

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
        if kept:
            self.cached = {name: np.concatenate([b[name] for b in kept]) for name in kept[0]}

    def _replay(self, seed: int) -> Iterator[dict[str, np.ndarray]]:
        rows = len(next(iter(self.cached.values())))
        order = np.random.default_rng(seed).permutation(rows) if self.shuffle else np.arange(rows)
        for start in range(0, rows, self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield {name: column[chosen] for name, column in self.cached.items()}
