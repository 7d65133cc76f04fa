"""Denoising: the share of hardest positions left out grows to ``train.denoise_drop``, and the
model's loss then averages only the positions kept."""

from __future__ import annotations

import pytest
import torch

from recsys_dist.config import TrainConfig
from recsys_dist.model import Bert4Rec
from recsys_dist.train.loop import denoise_share
from tests.model.tiny import batch, tiny_config


def test_the_dropped_share_ramps_up_then_holds():
    train = TrainConfig(denoise_drop=0.2, denoise_warmup_epochs=4)
    shares = [denoise_share(train, e) for e in range(6)]
    assert shares == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    assert denoise_share(TrainConfig(), 10) == 0.0  # off by default


def test_the_loss_averages_the_kept_positions_only():
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(dropout=0.0, attention_dropout=0.0)).eval()
    inputs, buckets, labels = batch()
    full = model(inputs, buckets, labels)
    per_row = torch.nn.functional.cross_entropy(
        full.logits, labels[labels != -100], reduction="none"
    )
    truncated = model(inputs, buckets, labels, drop_hardest=0.4).loss
    kept = len(per_row) - int(0.4 * len(per_row))
    torch.testing.assert_close(truncated, per_row.sort().values[:kept].mean())
    assert truncated < full.loss
