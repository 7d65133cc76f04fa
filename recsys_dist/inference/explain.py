"""Why an item was recommended: the history events it owes its score to.

Leave-one-out occlusion: the user's history is scored once whole and once without each event
the model reads (the last ``max_len - 1``), all in one batch; an event's weight for a
recommended item is how much that item's score (its logit) falls without the event (and its
rating, for a model that reads ratings). The weights are what the model itself does with and
without each event, not attention, which says where the model looks, not what the answer
depends on; ``tests/inference/test_explain.py`` checks that removing the top-3 events lowers
a recommendation's score more than removing 3 random ones. Cost: one forward pass over
``max_len`` sequences per explained user, whatever the number of items explained.

The online service (``POST /v1/recommend {"explain": true}``) explains one user with
:func:`explain`, ``recsys-dist recommend --explain`` a batch of users with
:func:`explain_many`; the first is the second for one user, so both give the same reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from recsys_dist import schema
from recsys_dist.inference.predictor import Recommender

TOP_REASONS = 3  # events shown per recommended item, online and in batch, by default
# The most sequences scored in one forward pass when explaining many users: a pass holds
# ``[sequences, vocab]`` logits, so this bounds memory whatever the batch size (a user's own
# ``max_len`` sequences always go in one pass).
MAX_SEQUENCES_PER_PASS = 1024


@dataclass(frozen=True)
class Because:
    """One history event behind a recommendation."""

    item_id: str
    timestamp: int
    weight: float  # the recommended item's score drop without this event (logits)
    share: float  # its part of the drops of all events that raised the score (0 to 1)


# A recommendation's reasons as an Arrow column (``recommend --explain`` writes it).
BECAUSE_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("item_id", pa.string()),
            pa.field("timestamp", pa.int64()),
            pa.field("weight", pa.float32()),
            pa.field("share", pa.float32()),
        ]
    )
)


def explain(
    recommender: Recommender,
    item_ids: Sequence[str],
    timestamps: Sequence[int],
    recommended: Sequence[str],
    query_time: int | None = None,
    top: int = TOP_REASONS,
    ratings: Sequence[float | None] | None = None,
) -> dict[str, list[Because]]:
    """The ``top`` events (of those that raised it) behind each recommended item, strongest
    first; an item the model does not know gets none. ``item_ids`` and ``timestamps``: the
    history, oldest first (raw ids; unknown items are skipped as scoring skips them);
    ``ratings``: its events' (``None`` or NaN: none), which leave with their events."""
    rated = None if ratings is None else [ratings]
    (found,) = explain_many(
        recommender, [item_ids], [timestamps], [recommended], [query_time], top, rated
    )
    return found


@torch.no_grad()
def explain_many(
    recommender: Recommender,
    item_ids: Sequence[Sequence[str]],
    timestamps: Sequence[Sequence[int]],
    recommended: Sequence[Sequence[str]],
    query_times: Sequence[int | None] | None = None,
    top: int = TOP_REASONS,
    ratings: Sequence[Sequence[float | None] | None] | None = None,
) -> list[dict[str, list[Because]]]:
    """:func:`explain` for each user ``i`` of a batch (``query_times[i]`` ``None``: the last
    event's time). Users share forward passes (at most :data:`MAX_SEQUENCES_PER_PASS`
    sequences each), so a batch costs its users' sequences, not one pass per user."""
    rated = ratings if ratings is not None else [None] * len(item_ids)
    read = [
        _read(recommender, ids, times, events_rated)
        for ids, times, events_rated in zip(item_ids, timestamps, rated, strict=True)
    ]
    queries = list(query_times) if query_times is not None else [None] * len(read)
    targets = [recommender.vocab.lookup(list(items)) for items in recommended]
    drops = _occlusion_drops(recommender, read, queries, targets)
    return [
        _reasons(recommender, history, times, items, target, user_drops, top)
        for (history, times, _), items, target, user_drops in zip(
            read, recommended, targets, drops, strict=True
        )
    ]


def _read(recommender: Recommender, item_ids, timestamps, ratings) -> tuple[np.ndarray, ...]:
    """The events the model reads, as indices, times and ratings (NaN: none): known items,
    the last ``max_len - 1`` (the mask takes the last position)."""
    indices = recommender.vocab.lookup(list(item_ids))
    known = indices >= schema.NUM_SPECIAL_TOKENS
    read = recommender.model.config.max_len - 1
    rated = np.full(len(indices), np.nan, np.float32) if ratings is None else ratings
    return tuple(
        np.asarray(values, dtype)[known][-read:]
        for values, dtype in ((indices, np.int64), (timestamps, np.int64), (rated, np.float32))
    )


def _reasons(
    recommender, history, times, recommended, targets, drops, top
) -> dict[str, list[Because]]:
    if not len(history):
        return {item: [] for item in recommended}
    names = recommender.vocab.to_item_ids(history).to_pylist()
    return {
        item: _strongest(drops[:, column], names, times, top)
        if target >= schema.NUM_SPECIAL_TOKENS
        else []
        for column, (item, target) in enumerate(zip(recommended, targets, strict=True))
    }


def _occlusion_drops(recommender, read, queries, targets) -> list[np.ndarray]:
    """Per user ``[events, targets]``: each target's score with the whole history minus its
    score without that one event (no rows for an empty history)."""
    drops = [np.zeros((0, len(t)), np.float32) for t in targets]
    users = [u for u, (history, *_) in enumerate(read) if len(history)]
    for chunk in _passes(users, [len(read[u][0]) + 1 for u in users]):
        variants, variant_times, variant_ratings, query = [], [], [], []
        for user in chunk:
            history, times, rated = read[user]
            variants += _leave_one_out(history)
            variant_times += _leave_one_out(times)
            variant_ratings += _leave_one_out(rated)
            at = queries[user] if queries[user] is not None else times[-1]
            query += [int(at)] * (len(history) + 1)
        query = np.asarray(query, np.int64)
        scores = recommender.next_item_scores(variants, variant_times, query, variant_ratings)
        start = 0
        for user in chunk:
            rows = slice(start, start + len(read[user][0]) + 1)
            columns = torch.as_tensor(_target_columns(targets[user]), device=scores.device)
            chosen = scores[rows][:, columns].cpu().numpy()  # [events + 1, targets]
            drops[user] = chosen[0][None, :] - chosen[1:]
            start = rows.stop
    return drops


def _leave_one_out(events: np.ndarray) -> list[np.ndarray]:
    """The whole sequence, then it without each event in turn: ``len + 1`` sequences."""
    keep = ~np.eye(len(events), dtype=bool)
    return [events, *(events[row] for row in keep)]


def _target_columns(targets: np.ndarray) -> np.ndarray:
    """Columns to read: an unknown target reads the first real item's (finite; its reasons
    are never given), not PAD's ``-inf``, whose differences would be NaN."""
    return np.where(targets >= schema.NUM_SPECIAL_TOKENS, targets, schema.NUM_SPECIAL_TOKENS)


def _passes(users: list[int], sizes: list[int]) -> list[list[int]]:
    """``users`` cut into runs of at most :data:`MAX_SEQUENCES_PER_PASS` sequences (a user
    with more gets a pass alone)."""
    passes: list[list[int]] = []
    total = MAX_SEQUENCES_PER_PASS
    for user, size in zip(users, sizes, strict=True):
        if total + size > MAX_SEQUENCES_PER_PASS:
            passes.append([])
            total = 0
        passes[-1].append(user)
        total += size
    return passes


def _strongest(drops: np.ndarray, names: list[str], times: np.ndarray, top: int) -> list[Because]:
    raised = drops[drops > 0].sum()
    order = [i for i in np.argsort(-drops, kind="stable")[:top] if drops[i] > 0]
    return [
        Because(names[i], int(times[i]), float(drops[i]), float(drops[i] / raised)) for i in order
    ]
