"""The model scorer on a dataset that knows more items than the model (the retraining gate)."""

from __future__ import annotations

import numpy as np
import torch

from recsys_dist.data.batching import ModelInputs
from recsys_dist.evaluation.ranking import model_scorer
from recsys_dist.model import Bert4Rec, Bert4RecConfig
from recsys_dist.schema import MASK_INDEX, PAD_INDEX


def test_items_the_model_never_saw_are_left_out_and_cannot_be_recommended():
    torch.manual_seed(0)
    model = Bert4Rec(
        Bert4RecConfig(vocab_size=12, max_len=5, hidden_size=8, num_heads=2, intermediate_size=16)
    )
    items = np.array([[PAD_INDEX, 3, 14, 4, MASK_INDEX]])  # 14: a new item (data vocab 16)
    buckets = np.array([[0, 0, 3, 2, 1]])
    scores = model_scorer(model, torch.device("cpu"), vocab_size=16)(ModelInputs(items, buckets))
    assert scores.shape == (1, 16) and torch.isneginf(scores[0, 12:]).all()
    without = np.where(items == 14, PAD_INDEX, items)
    expected = model.score_next(torch.as_tensor(without), torch.as_tensor(buckets))
    torch.testing.assert_close(scores[:, :12], expected)
    same_vocab = model_scorer(model, torch.device("cpu"))(ModelInputs(without, buckets))
    torch.testing.assert_close(same_vocab, expected)
