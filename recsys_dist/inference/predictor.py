"""One predictor for batch scoring (Ray Data ``map_batches``) and online serving (Ray Serve).

It loads an exported model once and turns raw histories into top-K recommendations. Items
the model has never seen are ignored for scoring and counted, so callers can report them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys_dist import schema
from recsys_dist.checkpoint import load_checkpoint
from recsys_dist.data.batching import prediction_inputs
from recsys_dist.evaluation.metrics import seen_mask

logger = logging.getLogger(__name__)

RECOMMENDED = "recommended"  # list<string>: top-K raw item ids, best first
SCORES = "scores"  # list<float>: their scores
UNKNOWN_ITEMS = "unknown_items"  # int: history events whose item the model does not know
QUERY_TIME = "query_time"  # optional int64 input: when the recommendation is asked for


@dataclass
class Recommendations:
    """Top-K per row, best first, and how many history events the model did not know."""

    item_ids: list[list[str]]
    scores: list[np.ndarray]  # float32 per row
    unknown_items: np.ndarray  # int64 [rows]


class Recommender:
    """``__call__(batch)`` maps ``user_id, item_ids, timestamps`` rows to top-K items.

    ``model_dir`` is an export, local or ``s3://`` (copied to a temporary directory once, when
    the predictor is built, so each Ray Data actor or Serve replica downloads it once).
    :meth:`recommend` is the same scoring with per-row options, for the online service.
    """

    def __init__(self, model_dir: str, k: int = 10, exclude_seen: bool = True) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_checkpoint(model_dir, map_location=str(self.device))
        self.model = loaded.model.to(self.device).eval()
        self.vocab = loaded.vocab
        self.state = loaded.state
        self.k = min(k, self.vocab.num_items)
        self.exclude_seen = exclude_seen
        self.model_version = model_version(loaded.state, model_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = batch.get(QUERY_TIME)
        found = self.recommend(
            [list(ids) for ids in batch[schema.ITEM_IDS]],
            [np.asarray(t, np.int64) for t in batch[schema.TIMESTAMPS]],
            query_times=np.asarray(query, np.int64) if query is not None else None,
        )
        return {
            schema.USER_ID: np.asarray(batch[schema.USER_ID]),
            RECOMMENDED: _object_rows(found.item_ids),
            SCORES: _object_rows(found.scores),
            UNKNOWN_ITEMS: found.unknown_items,
        }

    @torch.no_grad()
    def recommend(
        self,
        item_ids: Sequence[Sequence[str]],
        timestamps: Sequence[np.ndarray],
        query_times: np.ndarray | None = None,
        ks: Sequence[int] | None = None,
        exclude_seen: Sequence[bool] | None = None,
        allow: Sequence[Sequence[str] | None] | None = None,
        deny: Sequence[Sequence[str] | None] | None = None,
    ) -> Recommendations:
        """Top-``ks[i]`` items for every history ``i`` (raw ids, oldest first).

        ``query_times`` default to each history's last time. ``allow`` limits a row to those
        items, ``deny`` removes items; both take raw ids and ignore unknown ones.
        """
        rows = len(item_ids)
        histories, times, unknown = self._index_histories(item_ids, timestamps)
        if query_times is None:
            query_times = np.asarray([t[-1] if len(t) else 0 for t in times], np.int64)
        scores = self._scores(histories, times, query_times)
        exclude = exclude_seen if exclude_seen is not None else [self.exclude_seen] * rows
        masked = [
            h if e else np.zeros(0, np.int64) for h, e in zip(histories, exclude, strict=True)
        ]
        scores = scores.masked_fill(seen_mask(masked, rows, scores.shape[1], self.device), -np.inf)
        scores = self._filter(scores, allow, deny)
        ks = [min(k, self.vocab.num_items) for k in (ks or [self.k] * rows)]
        top = torch.topk(scores, max(ks), dim=1)
        values, indices = top.values.cpu().numpy(), top.indices.cpu().numpy()
        kept = [np.isfinite(values[r, : ks[r]]) for r in range(rows)]  # filters may leave < k
        return Recommendations(
            [self.vocab.to_item_ids(indices[r, : ks[r]][kept[r]]).to_pylist() for r in range(rows)],
            [values[r, : ks[r]][kept[r]] for r in range(rows)],
            unknown,
        )

    @torch.no_grad()
    def next_item_scores(
        self, histories: Sequence[np.ndarray], times: Sequence[np.ndarray], query_times: np.ndarray
    ) -> torch.Tensor:
        """``[B, vocab]`` next-item logits of each history (item *indices* in), ``-inf`` at PAD
        and MASK: a softmax of them, at some temperature, is what interest forecasts sum by
        group."""
        return self._scores(histories, times, query_times)

    def _scores(self, histories, times, query_times: np.ndarray) -> torch.Tensor:
        """``[B, vocab]`` next-item scores; PAD and MASK can never be recommended."""
        config = self.model.config
        inputs = prediction_inputs(
            histories,
            times,
            query_times,
            config.max_len,
            config.num_time_buckets,
            config.use_event_ages,
        )
        ages = inputs.age_buckets
        scores = self.model.score_next(
            torch.as_tensor(inputs.items, device=self.device),
            torch.as_tensor(inputs.time_buckets, device=self.device),
            None if ages is None else torch.as_tensor(ages, device=self.device),
        ).float()
        scores[:, : schema.NUM_SPECIAL_TOKENS] = -np.inf
        return scores

    def _filter(self, scores: torch.Tensor, allow, deny) -> torch.Tensor:
        for row in range(scores.shape[0]):
            if allow is not None and allow[row] is not None:
                keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=self.device)
                keep[torch.as_tensor(self._known(allow[row]), device=self.device)] = True
                scores[row] = scores[row].masked_fill(~keep, -np.inf)
            if deny is not None and deny[row] is not None:
                scores[row, torch.as_tensor(self._known(deny[row]), device=self.device)] = -np.inf
        return scores

    def _known(self, item_ids: Sequence[str]) -> np.ndarray:
        indices = self.vocab.lookup(item_ids)
        return indices[indices >= schema.NUM_SPECIAL_TOKENS]

    def _index_histories(self, item_ids, timestamps):
        """Raw ids → indices per row, dropping (and counting) items outside the vocabulary."""
        histories, times, unknown = [], [], []
        for ids, row_times in zip(item_ids, timestamps, strict=True):
            indices = self.vocab.lookup(ids)
            known = indices >= schema.NUM_SPECIAL_TOKENS
            histories.append(indices[known])
            times.append(np.asarray(row_times, np.int64)[known])
            unknown.append(int((~known).sum()))
        return histories, times, np.asarray(unknown, np.int64)

    def popular(
        self, k: int, exclude: Sequence[str] = (), allow: Sequence[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` most frequent training items, without ``exclude`` and (given ``allow``)
        only among those: the cold-start answer."""
        counts = self.vocab.popularity()
        excluded = set(self._known(exclude).tolist())
        if allow is None:
            ranked = self._by_popularity[: k + len(excluded)]
        else:
            allowed = self._known(allow)
            ranked = allowed[np.argsort(-counts[allowed], kind="stable")]
        best = np.asarray([i for i in ranked if i not in excluded][:k], np.int64)
        return self.vocab.to_item_ids(best).to_pylist(), counts[best].astype(np.float32)

    @functools.cached_property
    def _by_popularity(self) -> np.ndarray:
        """Real items, most frequent first (ties by index), sorted once."""
        counts = self.vocab.popularity()[schema.NUM_SPECIAL_TOKENS :]
        return np.argsort(-counts, kind="stable") + schema.NUM_SPECIAL_TOKENS


def model_version(state: dict, model_dir: str) -> str:
    """A short name for an export: its data hash and epoch, or its state's own version."""
    if "model_version" in state:
        return str(state["model_version"])
    data = str(state.get("data_hash", ""))[:8]
    epoch = state.get("metrics", {}).get("epoch", state.get("epoch", "?"))
    return f"{data or 'model'}-epoch{epoch}"


def _object_rows(rows: list) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out
