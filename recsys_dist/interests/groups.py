"""Interest groups: what a user's interest profile is a distribution over.

A group is a catalogue category; an item with several categories counts a share in each. Items
the catalogue gives no category (or every item, without a catalogue) are grouped by the model
itself: k-means over their item embeddings, so "cluster-3" is a set of items the model treats
alike. Everything downstream sees one ``[items, groups]`` weight matrix, each item's row
summing to 1 (PAD and MASK rows are 0).
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_dist import schema
from recsys_dist.data.vocab import Vocabulary

KMEANS_ITERATIONS = 25


class InterestGroups:
    """Each vocabulary index's weight in each group: a sparse ``[V, G]`` matrix, rows by item
    (CSR), so a catalogue of millions of items costs memory per (item, category), not V x G."""

    def __init__(self, names, items: np.ndarray, groups: np.ndarray, weights, vocab_size: int):
        self.names = tuple(names)
        order = np.argsort(items, kind="stable")
        self.groups = np.asarray(groups, np.int64)[order]  # [nnz]
        self.weights = np.asarray(weights, np.float32)[order]  # [nnz], per item summing to 1
        counts = np.bincount(np.asarray(items)[order], minlength=vocab_size)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # [V + 1]
        self.vocab_size = vocab_size
        # [G, V] for aggregating item distributions: G x V @ V x B.
        rows = np.repeat(np.arange(vocab_size), counts)
        self._by_group = torch.sparse_coo_tensor(
            np.stack([self.groups, rows]),
            self.weights,
            (self.size, vocab_size),
            check_invariants=True,
        ).coalesce()

    @property
    def size(self) -> int:
        return len(self.names)

    def of_events(self, items: np.ndarray) -> np.ndarray:
        """``[E, G]`` group weights of a sequence of item indices (zeros for PAD/MASK)."""
        items = np.asarray(items, np.int64)
        starts, counts = self.offsets[items], np.diff(self.offsets)[items]
        event = np.repeat(np.arange(len(items)), counts)
        entry = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        out = np.zeros((len(items), self.size), np.float32)
        np.add.at(out, (event, self.groups[entry]), self.weights[entry])
        return out

    def aggregate(self, probs: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` item distributions → ``[B, G]`` group distributions."""
        matrix = self._by_group.to(device=probs.device, dtype=probs.dtype)
        return torch.sparse.mm(matrix, probs.T).T


def build_groups(
    vocab: Vocabulary,
    categories: dict[str, list[str]] | None,
    item_embeddings: np.ndarray,
    clusters: int,
    seed: int = 0,
) -> InterestGroups:
    """Catalogue categories where items have them, embedding clusters for the rest.

    ``item_embeddings`` is the model's ``[V, H]`` item embedding table (rows by vocabulary
    index); only rows of uncategorised items are clustered.
    """
    first = schema.NUM_SPECIAL_TOKENS
    ids = vocab.item_ids.to_pylist()
    names: dict[str, int] = {}
    items, group_of, weights = [], [], []
    uncategorised = []
    for offset, item in enumerate(ids):
        labels = (categories or {}).get(item)
        if not labels:
            uncategorised.append(first + offset)
            continue
        labels = sorted(set(labels))
        for label in labels:
            items.append(first + offset)
            group_of.append(names.setdefault(label, len(names)))
            weights.append(1.0 / len(labels))
    if uncategorised:
        rows = np.asarray(uncategorised, np.int64)
        assignment = kmeans(item_embeddings[rows], min(clusters, len(rows)), seed)
        for index, cluster in zip(rows.tolist(), assignment.tolist(), strict=True):
            items.append(index)
            group_of.append(names.setdefault(f"cluster-{cluster}", len(names)))
            weights.append(1.0)
    return InterestGroups(names, np.asarray(items, np.int64), group_of, weights, vocab.size)


def kmeans(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster of each row: spherical k-means (cosine), k-means++ start, Lloyd iterations.

    Cosine because the model scores items by dot products, where an embedding's direction
    carries more of its meaning than its length (popular items grow long).
    """
    x = torch.nn.functional.normalize(torch.as_tensor(points, dtype=torch.float32), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: far points are likelier next centres
        distance = (1 - x @ centres.T).min(dim=1).values.clamp_min(0) + 1e-12
        centres = torch.cat([centres, x[torch.multinomial(distance, 1, generator=generator)]])
    for _ in range(KMEANS_ITERATIONS):
        assignment = (x @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        empty = sums.norm(dim=1) == 0
        centres = torch.where(empty[:, None], centres, torch.nn.functional.normalize(sums, dim=1))
    return (x @ centres.T).argmax(dim=1).numpy()
