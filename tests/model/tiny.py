"""A tiny model config and batch shared by the model tests (HF's ``BertModelTester`` habit)."""

from __future__ import annotations

import torch

from recsys_dist.data.masking import IGNORE_INDEX
from recsys_dist.model import Bert4RecConfig
from recsys_dist.schema import MASK_INDEX, PAD_INDEX

VOCAB, MAX_LEN, BUCKETS = 30, 8, 6


def tiny_config(**overrides) -> Bert4RecConfig:
    values = dict(
        vocab_size=VOCAB,
        max_len=MAX_LEN,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        dropout=0.1,
        attention_dropout=0.1,
        num_time_buckets=BUCKETS,
    )
    return Bert4RecConfig(**{**values, **overrides})


def batch(seed: int = 0, size: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded items, time buckets and labels at the last position (MASK put there)."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(2, VOCAB, (size, MAX_LEN), generator=gen)
    items[0, :3] = PAD_INDEX
    buckets = torch.randint(0, BUCKETS, (size, MAX_LEN), generator=gen)
    labels = torch.full_like(items, IGNORE_INDEX)
    labels[:, -1] = items[:, -1]
    labels[1, 4] = items[1, 4]
    inputs = items.masked_fill(labels != IGNORE_INDEX, MASK_INDEX)
    return inputs, buckets, labels
