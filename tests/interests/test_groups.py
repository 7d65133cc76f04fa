"""Interest groups from catalogue categories, and embedding clusters for the rest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from recsys_dist.data.vocab import Vocabulary
from recsys_dist.interests.groups import build_groups, kmeans


def vocab(ids: list[str]) -> Vocabulary:
    return Vocabulary(pa.array(ids), np.ones(len(ids), np.int64))


def test_items_share_their_weight_among_their_categories():
    v = vocab(["a", "b", "c"])
    groups = build_groups(v, {"a": ["x"], "b": ["x", "y"], "c": ["y"]}, np.zeros((5, 2)), 4)
    assert groups.names == ("x", "y")
    events = groups.of_events(np.array([2, 3, 4, 0]))  # a, b, c, PAD
    assert np.allclose(events, [[1, 0], [0.5, 0.5], [0, 1], [0, 0]])
    probs = torch.tensor([[0.0, 0.0, 0.2, 0.4, 0.4]])
    assert torch.allclose(groups.aggregate(probs), torch.tensor([[0.4, 0.6]]))


def test_uncategorised_items_are_clustered_by_embedding():
    rng = np.random.default_rng(0)
    left, right = rng.normal(0, 0.1, (20, 4)) + [3, 0, 0, 0], rng.normal(0, 0.1, (20, 4))
    right += [0, 3, 0, 0]
    embeddings = np.concatenate([np.zeros((2, 4)), left, right, np.ones((1, 4))])
    ids = [f"i{k}" for k in range(41)]
    groups = build_groups(vocab(ids), {"i40": ["known"]}, embeddings, clusters=2)
    assert set(groups.names) == {"known", "cluster-0", "cluster-1"}
    members = groups.of_events(np.arange(2, 43)).argmax(axis=1)
    assert len(set(members[:20])) == 1 and len(set(members[20:40])) == 1
    assert members[0] != members[20]
    assert groups.names[members[-1]] == "known"


def test_kmeans_is_deterministic_for_a_seed():
    points = np.random.default_rng(1).normal(size=(200, 8))
    assert (kmeans(points, 5, seed=3) == kmeans(points, 5, seed=3)).all()
