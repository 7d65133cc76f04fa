"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_dist.errors import UserInputError
from recsys_dist.evaluation.metrics import (
    finalize_metrics,
    ranking_metric_sums,
    sample_negatives,
    sampled_target_ranks,
    target_ranks,
)

NEG_INF = float("-inf")

# Columns: PAD, MASK, items 2..7. The special columns get huge scores to prove they are ignored.
SCORES = torch.tensor(
    [
        [9.0, 9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 0.4],  # target 3 (0.5): only item 5 higher -> rank 2
        [9.0, 9.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # target 7 (0.3): 5 items higher -> rank 6
        [9.0, 9.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9],  # target 7 highest -> rank 1
        [9.0, 9.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # all tied -> rank 1 (ties favour target)
    ]
)
TARGETS = torch.tensor([3, 7, 7, 4])


def test_target_ranks_hand_computed():
    assert target_ranks(SCORES, TARGETS).tolist() == [2, 6, 1, 1]


def test_a_target_the_model_cannot_score_ranks_last():
    """A diverged model (NaN everywhere) or an item the model never saw (-inf) is a miss,
    never a tie won: the retraining gate must not promote a broken candidate."""
    scores = SCORES.clone()
    scores[0] = float("nan")  # every score NaN
    scores[1, 7] = NEG_INF  # the target unknown to the model
    scores[2, 2:] = NEG_INF  # nothing known at all
    nothing = torch.tensor([], dtype=torch.long)
    seen = [nothing, torch.tensor([2]), nothing, nothing]
    assert target_ranks(scores, TARGETS).tolist() == [6, 6, 6, 1]
    assert target_ranks(scores, TARGETS, seen).tolist() == [6, 5, 6, 1]


def test_exclude_seen_lifts_the_target():
    seen = [
        torch.tensor([5, 3]),
        torch.tensor([2, 3, 0]),
        torch.tensor([], dtype=torch.long),
        torch.tensor([4]),
    ]
    # row 0: 5 seen -> rank 1; target 3 itself stays. row 1: 2 and 3 dropped -> rank 4.
    assert target_ranks(SCORES, TARGETS, seen).tolist() == [1, 4, 1, 1]
    mask = torch.zeros_like(SCORES, dtype=torch.bool)
    mask[1, [2, 3]] = True
    assert target_ranks(SCORES, TARGETS, mask).tolist() == [2, 4, 1, 1]


def test_sampled_ranks_never_exceed_full_ranks():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 500, generator=gen)
    targets = torch.randint(2, 500, (64,), generator=gen)
    seen = [torch.randint(2, 500, (10,), generator=gen) for _ in range(64)]
    negatives = sample_negatives(20, targets, seen, 500, np.random.default_rng(0), None)
    assert negatives.shape == (64, 20)
    sampled = sampled_target_ranks(scores, targets, negatives)
    full = target_ranks(scores, targets, seen)
    assert (sampled <= full).all() and (sampled >= 1).all() and (sampled <= 21).all()
    assert torch.equal(
        sampled_target_ranks(SCORES, TARGETS, torch.tensor([[5, 2]] * 4)),
        torch.tensor([2, 3, 1, 1]),
    )


def test_sample_negatives_excludes_specials_target_and_seen():
    targets = torch.tensor([2, 3])
    seen = [torch.tensor([4, 5]), torch.tensor([6])]
    negatives = sample_negatives(5, targets, seen, 10, torch.Generator().manual_seed(1), None)
    assert sorted(negatives[0].tolist()) == [3, 6, 7, 8, 9]  # the only 5 allowed for row 0
    assert len(set(negatives[1].tolist())) == 5
    assert not set(negatives[1].tolist()) & {0, 1, 3, 6}
    popularity = np.zeros(10)
    popularity[[7, 8]] = 1.0
    popular = sample_negatives(2, targets, seen, 10, np.random.default_rng(0), popularity)
    assert sorted(popular[0].tolist()) == sorted(popular[1].tolist()) == [7, 8]
    again = sample_negatives(5, targets, seen, 10, torch.Generator().manual_seed(1), None)
    assert torch.equal(negatives, again)
    with pytest.raises(UserInputError, match="only 5 unseen items"):  # exit 2 at the CLI
        sample_negatives(6, targets, seen, 10, np.random.default_rng(0), None)


def test_metric_sums_and_means_hand_computed():
    ranks = torch.tensor([1, 2, 6, 11])
    sums = ranking_metric_sums(ranks, ks=(1, 5, 10))
    assert sums["count"] == 4
    assert sums["hr@1"] == 1 and sums["hr@5"] == 2 and sums["hr@10"] == 3
    assert sums["ndcg@5"] == pytest.approx(1 + 1 / math.log2(3))
    assert sums["ndcg@10"] == pytest.approx(1 + 1 / math.log2(3) + 1 / math.log2(7))
    assert sums["mrr@10"] == pytest.approx(1 + 1 / 2 + 1 / 6)
    means = finalize_metrics(sums)
    assert means["hr@10"] == 0.75 and means["count"] == 4
    assert means["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 6) / 4)
    # Sums from two shards add up to the sums of the whole (what all_reduce relies on).
    halves = [ranking_metric_sums(part, ks=(1, 5, 10)) for part in (ranks[:1], ranks[1:])]
    assert {k: halves[0][k] + halves[1][k] for k in sums} == pytest.approx(sums)
    with pytest.raises(ValueError, match="count"):
        finalize_metrics({"hr@10": 0.0, "count": 0.0})


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="targets must be in"):
        target_ranks(SCORES, torch.tensor([3, 7, 7, 1]))
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        target_ranks(SCORES[0], TARGETS)
