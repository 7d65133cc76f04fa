"""The catalogue's category peers of items a parent model never saw."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys_dist.data.catalogue import category_peers
from recsys_dist.data.vocab import Vocabulary


def test_new_items_get_the_known_items_of_their_categories():
    vocab = Vocabulary(pa.array(["a", "b", "c", "new1", "new2", "new3"]), np.ones(6, np.int64))
    parent_rows = np.array([0, 1, 4, 2, 3, -1, -1, -1])  # a, b, c known (another order)
    categories = {"a": ["x"], "b": ["x", "y"], "c": ["y"], "new1": ["y"], "new2": ["z"]}
    peers = category_peers(vocab, parent_rows, categories)
    assert list(peers) == [5]  # new2's category has no known item; new3 has no category
    np.testing.assert_array_equal(peers[5], [2, 3])  # b and c, as the parent's rows
