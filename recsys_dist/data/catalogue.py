"""The item catalogue: each item's categories, read from a canonical dataset's ``items/``.

Category filters in the online service and interest profiles both need it. A prepared dataset
remembers where its events came from, and the catalogue sits beside them, so a run finds its
catalogue without being told.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.data.prepared import load_manifest


def catalogue_dir(prepared_dir: str) -> str | None:
    """``items/`` beside the events ``prepared_dir`` was prepared from (``None``: no source)."""
    sources = load_manifest(prepared_dir).get("sources") or []
    return storage.join(sources[0]["path"], schema.ITEMS_DIR) if sources else None


def read_categories(items_dir: str | None) -> dict[str, list[str]] | None:
    """Item id → its categories (items without any are left out); ``None`` when there is no
    catalogue at ``items_dir``. Read one file at a time."""
    if not items_dir or not storage.exists(items_dir):
        return None
    categories: dict[str, list[str]] = {}
    for path in storage.list_files(items_dir, ".parquet"):
        with storage.open_input(path) as handle:
            items = pq.read_table(handle, columns=[schema.ITEM_ID, schema.CATEGORIES])
        ids, lists = (items.column(n).to_pylist() for n in items.column_names)
        categories.update((i, c) for i, c in zip(ids, lists, strict=True) if c)
    return categories


def items_by_category(categories: dict[str, list[str]]) -> dict[str, list[str]]:
    """The inverse view: category → its item ids."""
    members: dict[str, list[str]] = {}
    for item, names in categories.items():
        for name in names:
            members.setdefault(name, []).append(item)
    return members
