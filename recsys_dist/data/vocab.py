"""The item vocabulary: raw item ids → contiguous indices, an artefact saved beside the data.

Indices 0 and 1 are PAD and MASK; real items start at :data:`schema.NUM_SPECIAL_TOKENS`.
The initial build orders items by frequency (ties by id) so indices are deterministic.
Indices never change once assigned: :meth:`Vocabulary.extend` only appends.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_dist import schema, storage


@dataclass(frozen=True)
class Vocabulary:
    """Item ids in index order (position i holds index i + NUM_SPECIAL_TOKENS) and counts."""

    item_ids: pa.Array  # string
    counts: np.ndarray  # int64, aligned with item_ids

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def size(self) -> int:
        """Rows of the model's item embedding: every item plus PAD and MASK."""
        return self.num_items + schema.NUM_SPECIAL_TOKENS

    @classmethod
    def from_counts(cls, item_ids: pa.Array, counts: np.ndarray) -> Vocabulary:
        """Most frequent first, ties broken by id, so the same data gives the same indices."""
        order = pa.table({"id": item_ids, "n": counts}).sort_by(
            [("n", "descending"), ("id", "ascending")]
        )
        return cls(order.column("id").combine_chunks(), order.column("n").to_numpy())

    def to_indices(self, item_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Map raw ids to indices; unknown ids map to -1 (callers count and drop them)."""
        position = pc.index_in(item_ids, value_set=self.item_ids)
        filled = pc.fill_null(position, -1 - schema.NUM_SPECIAL_TOKENS)
        return np.asarray(filled, dtype=np.int64) + schema.NUM_SPECIAL_TOKENS

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """:meth:`to_indices` for a handful of ids at a time (one online request): a hash
        lookup per id in a dict built once, where Arrow's ``index_in`` would rebuild its table
        of the whole catalogue on every call."""
        return np.fromiter((self._index_of.get(str(i), -1) for i in item_ids), np.int64)

    @functools.cached_property
    def _index_of(self) -> dict[str, int]:
        first = schema.NUM_SPECIAL_TOKENS
        return {item: first + i for i, item in enumerate(self.item_ids.to_pylist())}

    def to_item_ids(self, indices: np.ndarray) -> pa.Array:
        """Map indices back to raw ids; indices must be real items."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (
            indices.min() < schema.NUM_SPECIAL_TOKENS or indices.max() >= self.size
        ):
            raise ValueError(f"item indices outside [{schema.NUM_SPECIAL_TOKENS}, {self.size})")
        return self.item_ids.take(pa.array(indices - schema.NUM_SPECIAL_TOKENS))

    def extend(self, item_ids: pa.Array, counts: np.ndarray) -> Vocabulary:
        """Append ids not yet known (most frequent first); existing indices stay as they are."""
        new = pc.invert(pc.is_in(item_ids, value_set=self.item_ids))
        added = Vocabulary.from_counts(item_ids.filter(new), np.asarray(counts)[np.asarray(new)])
        return Vocabulary(
            pa.concat_arrays([self.item_ids, added.item_ids]),
            np.concatenate([self.counts, added.counts]),
        )

    def rows_in(self, other: Vocabulary) -> np.ndarray:
        """``[self.size]``: each of this vocabulary's rows' index in ``other`` (the same item),
        -1 where ``other`` lacks the item; PAD and MASK map to themselves. What a warm start
        copies from a parent trained with ``other``."""
        specials = np.arange(schema.NUM_SPECIAL_TOKENS, dtype=np.int64)
        return np.concatenate([specials, other.to_indices(self.item_ids)])

    def popularity(self) -> np.ndarray:
        """Counts aligned with indices (zero for PAD/MASK): for popularity baselines/sampling."""
        return np.concatenate([np.zeros(schema.NUM_SPECIAL_TOKENS, np.int64), self.counts])

    def save(self, path: str) -> None:
        indices = np.arange(self.num_items, dtype=np.int32) + schema.NUM_SPECIAL_TOKENS
        table = pa.table(
            [self.item_ids, pa.array(indices), pa.array(self.counts, pa.int64())],
            schema=schema.VOCAB_SCHEMA,
        )
        fs, inner = storage.resolve(path)
        pq.write_table(table, inner, filesystem=fs)

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        fs, inner = storage.resolve(path)
        table = pq.read_table(inner, filesystem=fs).sort_by(schema.INDEX)
        expected = np.arange(table.num_rows) + schema.NUM_SPECIAL_TOKENS
        if not np.array_equal(table.column(schema.INDEX).to_numpy(), expected):
            raise ValueError(f"{path}: vocabulary indices are not contiguous from 2")
        return cls(
            table.column(schema.ITEM_ID).combine_chunks(), table.column(schema.COUNT).to_numpy()
        )
