"""The item catalogue: each item's categories, read from a canonical dataset's ``items/``.

Category filters in the online service and interest profiles both need it. A prepared dataset
remembers where its events came from, and the catalogue sits beside them, so a run finds its
catalogue without being told.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.data.prepared import load_manifest
from recsys_dist.data.vocab import Vocabulary


def catalogue_dir(prepared_dir: str) -> str | None:
    """``items/`` beside the events ``prepared_dir`` was prepared from (``None``: no source)."""
    sources = load_manifest(prepared_dir).get("sources") or []
    return storage.join(sources[0]["path"], schema.ITEMS_DIR) if sources else None


def catalogue_rows(items_dir: str, columns: list[str]) -> Iterator[tuple]:
    """Each catalogue item's ``columns`` as a tuple, read one file at a time: the one reader
    of ``items/`` (categories, titles, item texts)."""
    for path in storage.list_files(items_dir, ".parquet"):
        with storage.open_input(path) as handle:
            items = pq.read_table(handle, columns=columns)
        yield from zip(*(items.column(name).to_pylist() for name in columns), strict=True)


def read_categories(items_dir: str | None) -> dict[str, list[str]] | None:
    """Item id → its categories (items without any are left out); ``None`` when there is no
    catalogue at ``items_dir``."""
    if not items_dir or not storage.exists(items_dir):
        return None
    rows = catalogue_rows(items_dir, [schema.ITEM_ID, schema.CATEGORIES])
    return {item: categories for item, categories in rows if categories}


def items_by_category(categories: dict[str, list[str]]) -> dict[str, list[str]]:
    """The inverse view: category → its item ids."""
    members: dict[str, list[str]] = {}
    for item, names in categories.items():
        for name in names:
            members.setdefault(name, []).append(item)
    return members


def category_peers(
    vocab: Vocabulary, parent_rows: np.ndarray, categories: dict[str, list[str]]
) -> dict[int, np.ndarray]:
    """For each item of ``vocab`` a parent model never saw (``parent_rows`` -1): the parent
    rows of the items it shares a catalogue category with, whose mean starts its embedding
    in a warm start. Items without a category, or whose categories the parent never saw, are
    left out (they start at the mean of all items)."""
    ids = vocab.item_ids.to_pylist()
    first = schema.NUM_SPECIAL_TOKENS
    members: dict[str, list[int]] = {}
    for offset, item in enumerate(ids):
        if parent_rows[first + offset] >= 0:
            for name in categories.get(item, ()):
                members.setdefault(name, []).append(int(parent_rows[first + offset]))
    peers = {}
    for offset, item in enumerate(ids):
        if parent_rows[first + offset] < 0:
            rows = [r for name in categories.get(item, ()) for r in members.get(name, ())]
            if rows:
                peers[first + offset] = np.unique(np.asarray(rows, np.int64))
    return peers
