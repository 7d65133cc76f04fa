"""Beyond-accuracy figures on lists small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_dist.evaluation.beyond import Exposure, category_codes, gini, percentiles
from recsys_dist.schema import NUM_SPECIAL_TOKENS

S = NUM_SPECIAL_TOKENS  # the first real item's index


def test_gini_is_zero_for_equal_exposure_and_near_one_for_a_single_item():
    assert gini(np.array([3, 3, 3, 3])) == 0.0
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(3 / 4)  # (n - 1) / n
    assert gini(np.zeros(5)) == 0.0


def test_percentiles_give_ties_their_mid_rank():
    assert percentiles(np.array([10.0, 0.0, 5.0, 5.0, 20.0])).tolist() == [75, 0, 37.5, 37.5, 100]


def test_each_list_counts_its_top_k_without_seen_items():
    """Four real items; scores rank them 3 > 2 > 1 > 0; the first user has seen item 3."""
    vocab_size = S + 4
    scores = torch.tensor([[0.0] * S + [1, 2, 3, 4], [0.0] * S + [1, 2, 3, 4]])
    categories = np.array([-1] * S + [0, 0, 1, 1])  # items 0, 1: category 0; 2, 3: category 1
    exposure = Exposure(vocab_size, k=2, categories=categories)
    exposure.add(scores, seen=[torch.tensor([S + 3]), torch.tensor([], dtype=torch.long)])
    # lists: user 1 -> items 2, 1; user 2 -> items 3, 2
    assert exposure.counts[S:].tolist() == [0, 1, 2, 1]
    popularity = np.array([0] * S + [8, 4, 2, 1])  # item 0 most popular
    figures = exposure.summary(popularity)
    assert figures["coverage"] == 3 / 4
    # percentiles of items 0..3 by count: 100, 66.7, 33.3, 0; slots: 1, 2, 2, 1 of items 1..3
    assert figures["popularity_percentile"] == pytest.approx((200 / 3 + 2 * 100 / 3 + 0) / 4)
    probability = (np.array([8, 4, 2, 1]) + 1) / (15 + 4)
    bits = -np.log2(probability)
    expected = (bits[1] + 2 * bits[2] + bits[3]) / 4
    assert figures["novelty"] == pytest.approx(expected)
    assert figures["exposure_gini"] == pytest.approx(gini(np.array([0, 1, 2, 1])))
    assert figures["intra_list_diversity"] == 1 / 2  # (2, 1) differ; (3, 2) share category 1


def test_without_a_catalogue_diversity_is_unknown_and_codes_follow_the_vocabulary():
    exposure = Exposure(S + 2, k=1)
    exposure.add(torch.tensor([[0.0] * S + [1, 2]]))
    assert exposure.summary(np.array([0] * S + [1, 1]))["intra_list_diversity"] is None
    codes = category_codes(["a", "b", "c"], {"a": ["x", "y"], "c": ["x"]}, S + 3)
    assert codes[S:].tolist() == [0, -1, 0]
