"""Warm start: every tensor from the parent, item rows matched by item, new items from peers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_dist.model import Bert4Rec
from recsys_dist.model.warm_start import warm_start

from .tiny import VOCAB, batch, tiny_config

GROWN = VOCAB + 4  # four items the parent never saw


@pytest.fixture()
def parent() -> Bert4Rec:
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config())
    with torch.no_grad():
        model.output_bias.normal_()  # zeros at init: make the copy visible
    return model.eval()


def grown_model(**overrides) -> Bert4Rec:
    torch.manual_seed(1)
    return Bert4Rec(tiny_config(vocab_size=GROWN, **overrides)).eval()


def test_known_items_score_as_the_parent_scored_them(parent):
    model = grown_model()
    rows = np.concatenate([np.arange(VOCAB), [-1, -1, -1, -1]])
    done = warm_start(model, parent, rows, peers={VOCAB: np.array([5, 6])})
    assert (done.copied, done.from_peers, done.from_mean) == (VOCAB - 2, 1, 3)
    items, buckets, _ = batch()
    before, after = parent.score_next(items, buckets), model.score_next(items, buckets)
    torch.testing.assert_close(after[:, :VOCAB], before)
    table, parent_table = model.item_embedding.weight, parent.item_embedding.weight
    torch.testing.assert_close(table[VOCAB], parent_table[[5, 6]].mean(0))
    torch.testing.assert_close(table[VOCAB + 1], parent_table[2:].mean(0))
    torch.testing.assert_close(model.output_bias[VOCAB], parent.output_bias[[5, 6]].mean())


def test_rows_follow_the_item_not_the_index(parent):
    """A vocabulary in another order (prepared afresh): each row comes from the same item."""
    model = grown_model()
    order = np.arange(2, VOCAB)[::-1].copy()
    rows = np.concatenate([[0, 1], order, [-1, -1, -1, -1]])
    warm_start(model, parent, rows)
    torch.testing.assert_close(
        model.item_embedding.weight[2:VOCAB], parent.item_embedding.weight[order]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 32}, "shape"),
        ({"use_event_ages": True}, "same model options"),
    ],
)
def test_another_model_shape_is_refused_by_name(parent, overrides, message):
    rows = np.concatenate([np.arange(VOCAB), [-1] * 4])
    with pytest.raises(ValueError, match=message):
        warm_start(grown_model(**overrides), parent, rows)


def test_a_mapping_that_does_not_fit_is_refused(parent):
    with pytest.raises(ValueError, match=f"parent_rows must be \\[{GROWN}\\]"):
        warm_start(grown_model(), parent, np.arange(VOCAB))
