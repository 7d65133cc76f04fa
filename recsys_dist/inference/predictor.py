"""One predictor for batch scoring (Ray Data ``map_batches``) and online serving (Ray Serve).

It loads an exported model once and turns raw histories into top-K recommendations. Items
the model has never seen are ignored for scoring and counted, so callers can report them.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
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


class Recommender:
    """``__call__(batch)`` maps ``user_id, item_ids, timestamps`` rows to top-K items.

    ``model_dir`` is an export, local or ``s3://`` (copied to a temporary directory once, when
    the predictor is built, so each Ray Data actor or Serve replica downloads it once).
    """

    def __init__(self, model_dir: str, k: int = 10, exclude_seen: bool = True) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_checkpoint(model_dir, map_location=str(self.device))
        self.model = loaded.model.to(self.device).eval()
        self.vocab = loaded.vocab
        self.k = min(k, self.vocab.num_items)
        self.exclude_seen = exclude_seen
        self.model_version = loaded.state.get("model_version", str(model_dir))

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        histories, times, unknown = self._index_histories(batch)
        query = batch.get(QUERY_TIME)
        query_times = np.asarray(
            query if query is not None else [t[-1] if len(t) else 0 for t in times], np.int64
        )
        config = self.model.config
        inputs = prediction_inputs(
            histories, times, query_times, config.max_len, config.num_time_buckets
        )
        scores = self.model.score_next(
            torch.as_tensor(inputs.items, device=self.device),
            torch.as_tensor(inputs.time_buckets, device=self.device),
        ).float()
        if self.exclude_seen:
            seen = seen_mask(histories, len(histories), scores.shape[1], self.device)
            scores = scores.masked_fill(seen, float("-inf"))
        top = torch.topk(scores, self.k, dim=1)
        indices = top.indices.cpu().numpy()
        return {
            schema.USER_ID: np.asarray(batch[schema.USER_ID]),
            RECOMMENDED: _object_rows([self.vocab.to_item_ids(r).to_pylist() for r in indices]),
            SCORES: _object_rows(list(top.values.cpu().numpy())),
            UNKNOWN_ITEMS: unknown,
        }

    def _index_histories(self, batch: dict[str, np.ndarray]):
        """Raw ids → indices per row, dropping (and counting) items outside the vocabulary."""
        histories, times, unknown = [], [], []
        for item_ids, timestamps in zip(
            batch[schema.ITEM_IDS], batch[schema.TIMESTAMPS], strict=True
        ):
            indices = self.vocab.to_indices(pa.array([str(i) for i in item_ids], pa.string()))
            known = indices >= schema.NUM_SPECIAL_TOKENS
            histories.append(indices[known])
            times.append(np.asarray(timestamps, np.int64)[known])
            unknown.append(int((~known).sum()))
        return histories, times, np.asarray(unknown, np.int64)


def _object_rows(rows: list) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out
