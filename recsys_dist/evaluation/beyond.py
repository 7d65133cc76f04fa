"""Beyond accuracy: what a model's top-k lists do to the catalogue, besides hitting the
held-out item.

Collected over the same rows and the same candidates (seen items excluded or not) as the
ranking metrics, for the model and the popularity baseline alike:

- ``coverage``: the share of the catalogue's items that appear in any list.
- ``popularity_percentile``: the mean, over every recommended slot, of the item's popularity
  percentile among the catalogue's items by training count (0 = rarest, 100 = most popular):
  how strongly the lists lean to what is already popular.
- ``exposure_gini``: inequality of how often each catalogue item is recommended, over all
  items, the never recommended included (0: every item equally often; near 1: a few items
  get every slot).
- ``novelty``: the mean self-information ``-log2 p(i)`` of recommended items, ``p(i)`` the
  item's share of training events (Laplace-smoothed, so an item with none stays finite):
  higher is less obvious (Zhou et al., PNAS 2010).
- ``intra_list_diversity``: the share of pairs within a list whose items' primary catalogue
  categories differ (pairs with an uncategorised item left out); None without a catalogue.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_dist.evaluation.metrics import Seen, seen_mask
from recsys_dist.schema import NUM_SPECIAL_TOKENS


class Exposure:
    """Top-``k`` lists' tally, batch by batch; :meth:`summary` gives the figures."""

    def __init__(self, vocab_size: int, k: int, categories: np.ndarray | None = None) -> None:
        """``categories``: each item index's primary category code (-1: none), or None."""
        self.k = k
        self.counts = np.zeros(vocab_size, np.int64)
        self.categories = categories
        self.diverse_pairs = 0
        self.categorised_pairs = 0

    def add(self, scores: torch.Tensor, seen: Seen = None) -> None:
        """Count the top-``k`` of each row of ``[B, V]`` scores, without seen items."""
        batch, vocab_size = scores.shape
        excluded = seen_mask(seen, batch, vocab_size, scores.device).clone()
        excluded[:, :NUM_SPECIAL_TOKENS] = True
        masked = scores.float().masked_fill(excluded, float("-inf"))
        k = min(self.k, vocab_size - NUM_SPECIAL_TOKENS)
        top = masked.topk(k, dim=1)
        indices, values = top.indices.cpu().numpy(), top.values.cpu().numpy()
        for items in (row[np.isfinite(v)] for row, v in zip(indices, values, strict=True)):
            np.add.at(self.counts, items, 1)
            if self.categories is not None:
                self._pairs(self.categories[items])

    def _pairs(self, codes: np.ndarray) -> None:
        codes = codes[codes >= 0]
        counts = np.unique(codes, return_counts=True)[1]
        pairs = len(codes) * (len(codes) - 1) // 2
        self.categorised_pairs += pairs
        self.diverse_pairs += pairs - int((counts * (counts - 1) // 2).sum())

    def summary(self, popularity: np.ndarray) -> dict[str, float | None]:
        """The figures, given each item index's training count (PAD/MASK first, as
        :meth:`Vocabulary.popularity` gives them)."""
        exposure = self.counts[NUM_SPECIAL_TOKENS:]
        counts = popularity[NUM_SPECIAL_TOKENS:].astype(np.float64)
        slots = exposure.sum()
        if not slots:
            return dict.fromkeys(_NAMES)
        probability = (counts + 1) / (counts.sum() + len(counts))
        diversity = (
            self.diverse_pairs / self.categorised_pairs
            if self.categories is not None and self.categorised_pairs
            else None
        )
        return {
            "coverage": float((exposure > 0).mean()),
            "popularity_percentile": float((exposure * percentiles(counts)).sum() / slots),
            "exposure_gini": gini(exposure),
            "novelty": float((exposure * -np.log2(probability)).sum() / slots),
            "intra_list_diversity": diversity,
        }


_NAMES = (
    "coverage",
    "popularity_percentile",
    "exposure_gini",
    "novelty",
    "intra_list_diversity",
)


def percentiles(counts: np.ndarray) -> np.ndarray:
    """Each value's percentile among ``counts`` (ties share the mid rank), 0 to 100."""
    ordered = np.sort(counts)
    below = np.searchsorted(ordered, counts, side="left")
    equal = np.searchsorted(ordered, counts, side="right") - below
    return 100.0 * (below + (equal - 1) / 2) / max(1, len(counts) - 1)


def gini(values: np.ndarray) -> float:
    """The Gini coefficient of non-negative ``values`` (0: all equal)."""
    ordered = np.sort(np.asarray(values, np.float64))
    total, n = ordered.sum(), len(ordered)
    if not total or n < 2:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * ordered).sum()) / (n * total) - (n + 1) / n)


def category_codes(item_ids: list[str], categories: dict[str, list[str]], size: int) -> np.ndarray:
    """Each item index's primary category as an integer code (-1: none); ``item_ids`` are the
    vocabulary's real items, in index order after PAD/MASK."""
    names: dict[str, int] = {}
    codes = np.full(size, -1, np.int64)
    for offset, item in enumerate(item_ids):
        found = categories.get(item)
        if found:
            codes[NUM_SPECIAL_TOKENS + offset] = names.setdefault(found[0], len(names))
    return codes
