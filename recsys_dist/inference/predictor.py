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
PREDICTED_RATINGS = "predicted_ratings"  # list<float>: predicted rating of each recommended item
RANK_BY = ("score", "rating")  # next-item score (default), or predicted rating (a rated model)


@dataclass
class Recommendations:
    """Top-K per row, best first, and how many history events the model did not know;
    ``ratings``: the predicted rating of each item (a model with a rating head)."""

    item_ids: list[list[str]]
    scores: list[np.ndarray]  # float32 per row: what the row was ranked by
    unknown_items: np.ndarray  # int64 [rows]
    ratings: list[np.ndarray] | None = None  # float32 per row


class Recommender:
    """``__call__(batch)`` maps ``user_id, item_ids, timestamps`` rows to top-K items.

    ``model_dir`` is an export, local or ``s3://`` (copied to a temporary directory once, when
    the predictor is built, so each Ray Data actor or Serve replica downloads it once).
    :meth:`recommend` is the same scoring with per-row options, for the online service.
    """

    def __init__(
        self, model_dir: str, k: int = 10, exclude_seen: bool = True, rank_by: str = "score"
    ) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_checkpoint(model_dir, map_location=str(self.device))
        self.model = loaded.model.to(self.device).eval()
        self.vocab = loaded.vocab
        self.state = loaded.state
        self.k = min(k, self.vocab.num_items)
        self.exclude_seen = exclude_seen
        self.model_version = model_version(loaded.state, model_dir)
        self.rating_scale = self.model.config.rating_scale()
        if rank_by == "rating" and self.rating_scale is None:
            raise ValueError(f"{model_dir}: the model has no rating head to rank by rating")
        self.rank_by = rank_by

    @property
    def predicts_ratings(self) -> bool:
        return self.rating_scale is not None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query, ratings = batch.get(QUERY_TIME), batch.get(schema.RATINGS)
        found = self.recommend(
            [list(ids) for ids in batch[schema.ITEM_IDS]],
            [np.asarray(t, np.int64) for t in batch[schema.TIMESTAMPS]],
            query_times=np.asarray(query, np.int64) if query is not None else None,
            ratings=None if ratings is None else [np.asarray(r, np.float32) for r in ratings],
        )
        out = {
            schema.USER_ID: np.asarray(batch[schema.USER_ID]),
            RECOMMENDED: _object_rows(found.item_ids),
            SCORES: _object_rows(found.scores),
            UNKNOWN_ITEMS: found.unknown_items,
        }
        if found.ratings is not None:
            out[PREDICTED_RATINGS] = _object_rows(found.ratings)
        return out

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
        ratings: Sequence[np.ndarray] | None = None,
        rank_by: Sequence[str] | None = None,
    ) -> Recommendations:
        """Top-``ks[i]`` items for every history ``i`` (raw ids, oldest first).

        ``query_times`` default to each history's last time. ``allow`` limits a row to those
        items, ``deny`` removes items; both take raw ids (unknown ones are ignored) or an int64
        array of vocabulary indices (:meth:`known_indices`, e.g. resolved once per category).
        ``ratings``: the histories' ratings (NaN: none), read by a model with a rating head.
        ``rank_by`` per row: ``"score"`` (next-item score) or ``"rating"`` (predicted rating).
        """
        rows = len(item_ids)
        histories, times, rated, unknown = self._index_histories(item_ids, timestamps, ratings)
        states, prior = self._states(histories, times, query_times, rated)
        scores = self._from_states(states)
        by_rating = [r for r, key in enumerate(rank_by or [self.rank_by] * rows) if key == "rating"]
        if by_rating:  # the whole catalogue's ratings only for the rows ranked by them
            if not self.predicts_ratings:
                raise ValueError("the model has no rating head to rank by rating")
            chosen_rows = torch.as_tensor(by_rating, device=self.device)
            predicted = self.model.ratings_of(states[chosen_rows], prior[chosen_rows]).float()
            first = schema.NUM_SPECIAL_TOKENS
            scores[chosen_rows, first:] = predicted[:, first:]
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
        chosen = [indices[r, : ks[r]][kept[r]] for r in range(rows)]
        rated_items = self._ratings_of(states, prior, chosen) if self.predicts_ratings else None
        return Recommendations(
            [self.vocab.to_item_ids(chosen[r]).to_pylist() for r in range(rows)],
            [values[r, : ks[r]][kept[r]] for r in range(rows)],
            unknown,
            rated_items,
        )

    @torch.no_grad()
    def rate(
        self,
        item_ids: Sequence[Sequence[str]],
        timestamps: Sequence[np.ndarray],
        candidates: Sequence[Sequence[str]],
        query_times: np.ndarray | None = None,
        ratings: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Predicted ratings of each row's ``candidates`` (raw ids) after its history; NaN for
        an item the model does not know.

        Raises:
            ValueError: If the model has no rating head.
        """
        if not self.predicts_ratings:
            raise ValueError("the model has no rating head (it was trained without ratings)")
        histories, times, rated, _ = self._index_histories(item_ids, timestamps, ratings)
        states, prior = self._states(histories, times, query_times, rated)
        indices = [self.vocab.lookup(list(items)) for items in candidates]
        known = [row >= schema.NUM_SPECIAL_TOKENS for row in indices]
        predicted = self._ratings_of(states, prior, [i[k] for i, k in zip(indices, known)])
        out = []
        for row_known, row_predicted in zip(known, predicted, strict=True):
            row = np.full(len(row_known), np.nan, np.float32)
            row[row_known] = row_predicted
            out.append(row)
        return out

    def _ratings_of(self, states, prior, items: list[np.ndarray]) -> list[np.ndarray]:
        """Each row's predicted ratings of its ``items`` (indices), float32: only those items
        are rated, not the whole catalogue."""
        lengths = [len(row) for row in items]
        owner = torch.as_tensor(np.repeat(np.arange(len(items)), lengths), device=self.device)
        flat = torch.as_tensor(np.concatenate([*items, np.zeros(0, np.int64)]), device=self.device)
        rated = self.model.ratings_of_items(states[owner], prior[owner], flat.long())
        return list(np.split(rated.float().cpu().numpy(), np.cumsum(lengths)[:-1]))

    @torch.no_grad()
    def next_item_scores(
        self,
        histories: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        query_times: np.ndarray,
        ratings: Sequence[np.ndarray] | None = None,
    ) -> torch.Tensor:
        """``[B, vocab]`` next-item logits of each history (item *indices* in), ``-inf`` at PAD
        and MASK: a softmax of them, at some temperature, is what interest forecasts sum by
        group. ``ratings``: the histories' (NaN: none), read by a model trained with them, so
        an explanation scores the history as :meth:`recommend` did."""
        return self._from_states(self._states(histories, times, query_times, ratings)[0])

    def _states(self, histories, times, query_times: np.ndarray | None, ratings=None):
        """``[B, H]`` query states, what both the next-item scores and the ratings read, and
        the ``[B]`` rating priors of the histories; ``query_times`` default to each
        history's last time."""
        if query_times is None:
            query_times = np.asarray([t[-1] if len(t) else 0 for t in times], np.int64)
        config = self.model.config
        inputs = prediction_inputs(
            histories,
            times,
            query_times,
            config.max_len,
            config.num_time_buckets,
            config.use_event_ages,
            ratings,
            self.rating_scale,
        )
        ages, rated = inputs.age_buckets, inputs.rating_buckets
        items = torch.as_tensor(inputs.items, device=self.device)
        rated = None if rated is None else torch.as_tensor(rated, device=self.device)
        states = self.model.query_state(
            items,
            torch.as_tensor(inputs.time_buckets, device=self.device),
            None if ages is None else torch.as_tensor(ages, device=self.device),
            rated,
        )
        prior = self.model.query_rating_prior(rated, items) if self.predicts_ratings else None
        return states, prior

    def _from_states(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, vocab]`` next-item scores; PAD and MASK can never be recommended."""
        scores = self.model.item_logits(states).float()
        scores[:, : schema.NUM_SPECIAL_TOKENS] = -np.inf
        return scores

    def _filter(self, scores: torch.Tensor, allow, deny) -> torch.Tensor:
        for row in range(scores.shape[0]):
            if allow is not None and allow[row] is not None:
                keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=self.device)
                keep[torch.as_tensor(self.known_indices(allow[row]), device=self.device)] = True
                scores[row] = scores[row].masked_fill(~keep, -np.inf)
            if deny is not None and deny[row] is not None:
                denied = torch.as_tensor(self.known_indices(deny[row]), device=self.device)
                scores[row, denied] = -np.inf
        return scores

    def known_indices(self, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """The vocabulary indices of the raw ids the model knows (unknown ones left out); an
        integer array is taken as indices already and passed through."""
        if isinstance(items, np.ndarray) and items.dtype.kind in "iu":
            return items.astype(np.int64, copy=False)
        indices = self.vocab.lookup(items)
        return indices[indices >= schema.NUM_SPECIAL_TOKENS]

    def _index_histories(self, item_ids, timestamps, ratings=None):
        """Raw ids → indices per row, dropping (and counting) items outside the vocabulary;
        the rows' ratings (if given) follow their events."""
        histories, times, rated, unknown = [], [], [], []
        for row, (ids, row_times) in enumerate(zip(item_ids, timestamps, strict=True)):
            indices = self.vocab.lookup(ids)
            known = indices >= schema.NUM_SPECIAL_TOKENS
            histories.append(indices[known])
            times.append(np.asarray(row_times, np.int64)[known])
            if ratings is not None:
                rated.append(np.asarray(ratings[row], np.float32)[known])
            unknown.append(int((~known).sum()))
        return (
            histories,
            times,
            rated if ratings is not None else None,
            np.asarray(unknown, np.int64),
        )

    def popular(
        self,
        k: int,
        exclude: Sequence[str] = (),
        allow: Sequence[str] | np.ndarray | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """The ``k`` most frequent training items, without ``exclude`` and (given ``allow``,
        raw ids or indices) only among those: the cold-start answer."""
        counts = self.vocab.popularity()
        excluded = np.unique(self.known_indices(exclude))
        if allow is None:
            ranked = self._by_popularity[: k + len(excluded)]
        else:
            allowed = self.known_indices(allow)
            ranked = allowed[np.argsort(-counts[allowed], kind="stable")]
        best = ranked[~np.isin(ranked, excluded)][:k].astype(np.int64)
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
