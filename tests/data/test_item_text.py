"""Item texts from the catalogue, and the items training shows (cold start's inputs)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema, storage
from recsys_dist.data.item_text import item_text, item_texts, read_item_texts, trained_items
from recsys_dist.data.prepared import load_manifest, split_spec
from recsys_dist.data.sequences import training_rows
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import MissingInputError


def write_catalogue(directory, rows: list[tuple[str, str | None, list[str] | None]]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    ids, titles, categories = (list(column) for column in zip(*rows, strict=True))
    table = pa.table(
        {schema.ITEM_ID: ids, schema.TITLE: titles, schema.CATEGORIES: categories},
        schema=schema.ITEM_SCHEMA,
    )
    pq.write_table(table, directory / "part-0.parquet")
    return str(directory)


def test_text_is_title_then_categories():
    assert item_text("Heat (1995)", ["Action", "Crime"]) == "Heat (1995). Action, Crime"
    assert item_text("Heat (1995)", None) == "Heat (1995)"
    assert item_text(None, ["Action", " "]) == "Action"
    assert item_text(" ", []) == ""


def test_one_text_per_vocabulary_row(tmp_path):
    items_dir = write_catalogue(
        tmp_path / "items",
        [("a", "Alpha", ["x"]), ("b", None, None), ("c", None, ["y", "z"]), ("gone", "G", None)],
    )
    vocab = Vocabulary(pa.array(["c", "a", "b", "unlisted"]), np.ones(4, np.int64))
    texts = item_texts(vocab, items_dir)
    assert texts == ["", "", "y, z", "Alpha. x", "", ""]  # PAD, MASK, c, a, b, unlisted
    assert read_item_texts(items_dir) == {"a": "Alpha. x", "c": "y, z", "gone": "G"}


def test_no_catalogue_or_no_text_is_a_user_error(tmp_path):
    vocab = Vocabulary(pa.array(["a"]), np.ones(1, np.int64))
    with pytest.raises(MissingInputError, match="catalogue"):
        item_texts(vocab, None)
    with pytest.raises(MissingInputError, match="catalogue"):
        item_texts(vocab, str(tmp_path / "nowhere"))
    empty = write_catalogue(tmp_path / "items", [("a", None, None), ("other", "T", None)])
    with pytest.raises(MissingInputError, match="no title or category"):
        item_texts(vocab, empty)


def test_trained_items_are_those_of_the_training_windows(tiny_run):
    prepared = str(tiny_run.prepared)
    manifest = load_manifest(prepared)
    trained = trained_items(prepared, manifest["vocab_size"])
    users = pq.read_table(storage.join(prepared, schema.USERS_DIR))
    windows = training_rows(users, split_spec(manifest))
    expected = np.unique(np.concatenate(windows.column(schema.ITEMS).to_pylist()))
    np.testing.assert_array_equal(np.flatnonzero(trained), expected)
    assert not trained[: schema.NUM_SPECIAL_TOKENS].any()
