"""The vocabulary: deterministic indices, unknown ids, append-only growth, round trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys_dist import schema
from recsys_dist.data.vocab import Vocabulary


def make_vocab() -> Vocabulary:
    return Vocabulary.from_counts(pa.array(["b", "a", "c", "d"]), np.array([5, 5, 9, 1]))


def test_most_frequent_first_ties_by_id():
    vocab = make_vocab()
    assert vocab.item_ids.to_pylist() == ["c", "a", "b", "d"]
    assert vocab.size == 4 + schema.NUM_SPECIAL_TOKENS
    assert vocab.to_indices(pa.array(["c", "d", "zzz"])).tolist() == [2, 5, -1]
    assert vocab.to_item_ids(np.array([3, 4])).to_pylist() == ["a", "b"]
    assert vocab.popularity().tolist() == [0, 0, 9, 5, 5, 1]


def test_special_indices_are_not_items():
    with pytest.raises(ValueError, match="outside"):
        make_vocab().to_item_ids(np.array([schema.MASK_INDEX]))


def test_extend_appends_and_never_moves_an_index():
    vocab = make_vocab()
    grown = vocab.extend(pa.array(["e", "a", "f"]), np.array([1, 100, 7]))
    assert grown.item_ids.to_pylist()[: vocab.num_items] == vocab.item_ids.to_pylist()
    assert grown.item_ids.to_pylist()[vocab.num_items :] == ["f", "e"]
    assert grown.to_indices(pa.array(["c", "f"])).tolist() == [2, 6]


def test_save_load_round_trip(tmp_path):
    vocab = make_vocab()
    vocab.save(str(tmp_path / schema.VOCAB_FILE))
    loaded = Vocabulary.load(str(tmp_path / schema.VOCAB_FILE))
    assert loaded.item_ids.equals(vocab.item_ids)
    assert np.array_equal(loaded.counts, vocab.counts)


def test_lookup_agrees_with_to_indices():
    vocab = Vocabulary.from_counts(pa.array(["b", "a", "c"]), np.array([5, 5, 9]))
    ids = ["c", "zz", "a", "b", "a"]
    np.testing.assert_array_equal(vocab.lookup(ids), vocab.to_indices(pa.array(ids)))
    assert vocab.lookup(["zz"]).tolist() == [-1]


def test_rows_in_another_vocabulary_match_items_by_id():
    parent = Vocabulary(pa.array(["a", "b", "c"]), np.array([3, 2, 1]))
    grown = parent.extend(pa.array(["d", "b"]), np.array([5, 1]))
    np.testing.assert_array_equal(grown.rows_in(parent), [0, 1, 2, 3, 4, -1])
    shuffled = Vocabulary(pa.array(["c", "z", "a"]), np.array([1, 1, 1]))
    np.testing.assert_array_equal(shuffled.rows_in(parent), [0, 1, 4, -1, 2])
