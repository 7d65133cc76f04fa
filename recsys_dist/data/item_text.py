"""The text of each vocabulary item, and which items training shows: cold start's inputs.

A model with ``model.item_text`` adds to every item's ID embedding a projection of its text
embedding (:mod:`recsys_dist.model.text_encoder` encodes the strings made here), so an item
seen in few or no training events is still placed by what it is. The text is the catalogue's
(``items/`` beside the events, :mod:`recsys_dist.data.catalogue`): ``"title. categories"``,
e.g. ``"Toy Story (1995). Animation, Children's, Comedy"``.

:func:`trained_items` marks the items some training window holds: the others are cold,
and training leaves them out of its softmax (``Bert4Rec.forward``'s ``left_out``).

Pure pyarrow + numpy (the data stage imports no torch).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.data.catalogue import catalogue_rows
from recsys_dist.data.prepared import load_manifest, split_spec, user_columns
from recsys_dist.data.sequences import training_rows
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import MissingInputError


def item_texts(vocab: Vocabulary, items_dir: str | None) -> list[str]:
    """One text per vocabulary row (``vocab.size``), ``""`` for PAD, MASK and items the
    catalogue gives no title or category.

    Raises:
        MissingInputError: If there is no catalogue at ``items_dir``, or it gives no text for
            any item of the vocabulary (``model.item_text`` would have nothing to read).
    """
    texts = read_item_texts(items_dir)
    if texts is None:
        raise MissingInputError(
            f"model.item_text needs the item catalogue (titles, categories) beside the "
            f"events, and there is none at {items_dir or 'the data source'}"
        )
    rows = [""] * schema.NUM_SPECIAL_TOKENS + [texts.get(i, "") for i in vocab.item_ids.to_pylist()]
    if not any(rows):
        raise MissingInputError(
            f"model.item_text: the catalogue at {items_dir} has no title or category for any "
            f"of the {vocab.num_items} items of the vocabulary"
        )
    return rows


def read_item_texts(items_dir: str | None) -> dict[str, str] | None:
    """Item id → ``"title. categories"`` (items with neither are left out); ``None`` when
    there is no catalogue at ``items_dir``."""
    if not items_dir or not storage.exists(items_dir):
        return None
    rows = catalogue_rows(items_dir, [schema.ITEM_ID, schema.TITLE, schema.CATEGORIES])
    texts = {item: item_text(title, categories) for item, title, categories in rows}
    return {item: text for item, text in texts.items() if text}


def item_text(title: str | None, categories: list[str] | None) -> str:
    """``"title. categories"`` (comma-separated), either part alone, or ``""``."""
    parts = [(title or "").strip(), ", ".join(c.strip() for c in categories or () if c.strip())]
    return ". ".join(part for part in parts if part)


def trained_items(prepared_dir: str, vocab_size: int) -> np.ndarray:
    """``[vocab_size]`` bool: the items some training window of ``prepared_dir`` holds.

    The rest (PAD, MASK, items only valid/test targets show, items a grown vocabulary
    added) are cold: no training event is evidence for their ID embedding. The windows are
    cut as training reads them, one bucket file of users at a time (memory stays flat).
    """
    spec = split_spec(load_manifest(prepared_dir))
    columns = user_columns(prepared_dir)
    trained = np.zeros(vocab_size, dtype=bool)
    for path in storage.list_files(storage.join(prepared_dir, schema.USERS_DIR), ".parquet"):
        with storage.open_input(path) as handle:
            windows = training_rows(pq.read_table(handle, columns=columns), spec)
        trained[pc.list_flatten(windows.column(schema.ITEMS)).to_numpy()] = True
    return trained
