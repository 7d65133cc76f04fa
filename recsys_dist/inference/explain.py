"""Why an item was recommended: the history events it owes its score to.

Leave-one-out occlusion: the user's history is scored once whole and once without each event
the model reads (the last ``max_len - 1``), all in one batch; an event's weight for a
recommended item is how much that item's score (its logit) falls without the event. The
weights are what the model itself does with and without each event, not attention, which
says where the model looks, not what the answer depends on; ``tests/inference/
test_explain.py`` checks that removing the top-3 events lowers a recommendation's score
more than removing 3 random ones. Cost: one forward pass over ``max_len`` sequences per
explained user, whatever the number of items explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys_dist import schema
from recsys_dist.inference.predictor import Recommender


@dataclass(frozen=True)
class Because:
    """One history event behind a recommendation."""

    item_id: str
    timestamp: int
    weight: float  # the recommended item's score drop without this event (logits)
    share: float  # its part of the drops of all events that raised the score (0 to 1)


@torch.no_grad()
def explain(
    recommender: Recommender,
    item_ids: Sequence[str],
    timestamps: Sequence[int],
    recommended: Sequence[str],
    query_time: int | None = None,
    top: int = 3,
) -> dict[str, list[Because]]:
    """The ``top`` events (of those that raised it) behind each recommended item, strongest
    first; an item the model does not know gets none. ``item_ids`` and ``timestamps``: the
    history, oldest first (raw ids; unknown items are skipped as scoring skips them)."""
    indices = recommender.vocab.lookup(list(item_ids))
    known = indices >= schema.NUM_SPECIAL_TOKENS
    read = recommender.model.config.max_len - 1  # the mask takes the last position
    history = indices[known][-read:]
    times = np.asarray(timestamps, np.int64)[known][-read:]
    targets = recommender.vocab.lookup(list(recommended))
    if not len(history):
        return {item: [] for item in recommended}
    drops = _occlusion_drops(recommender, history, times, query_time, targets)
    names = recommender.vocab.to_item_ids(history).to_pylist()
    return {
        item: _strongest(drops[:, column], names, times, top)
        if target >= schema.NUM_SPECIAL_TOKENS
        else []
        for column, (item, target) in enumerate(zip(recommended, targets, strict=True))
    }


def _occlusion_drops(recommender, history, times, query_time, targets) -> np.ndarray:
    """``[events, targets]``: each target's score with the whole history minus its score
    without that one event."""
    n = len(history)
    keep = ~np.eye(n, dtype=bool)
    variants = [history, *(history[row] for row in keep)]
    variant_times = [times, *(times[row] for row in keep)]
    query = int(query_time) if query_time is not None else int(times[-1])
    scores = recommender.next_item_scores(variants, variant_times, np.full(n + 1, query, np.int64))
    columns = torch.as_tensor(np.maximum(targets, 0), device=scores.device)
    chosen = scores[:, columns].cpu().numpy()  # [n + 1, targets]
    return chosen[0][None, :] - chosen[1:]


def _strongest(drops: np.ndarray, names: list[str], times: np.ndarray, top: int) -> list[Because]:
    raised = drops[drops > 0].sum()
    order = [i for i in np.argsort(-drops, kind="stable")[:top] if drops[i] > 0]
    return [
        Because(names[i], int(times[i]), float(drops[i]), float(drops[i] / raised)) for i in order
    ]
