"""Ranking evaluation of a sequential model: full-catalogue by default, sampled on request.

Returns metric *sums* so data-parallel workers can all-reduce them before dividing; the same
function serves validation inside training and the ``evaluate`` command.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from recsys_dist import schema
from recsys_dist.config import EvalConfig
from recsys_dist.data.batching import ModelInputs, RatingScale, evaluation_inputs
from recsys_dist.evaluation.beyond import Exposure
from recsys_dist.evaluation.metrics import (
    ranking_metric_sums,
    sample_negatives,
    sampled_target_ranks,
    target_ranks,
)
from recsys_dist.model import Bert4Rec
from recsys_dist.schema import PAD_INDEX


def protocol(eval_config: EvalConfig) -> str:
    """A one-line description printed next to every set of numbers."""
    seen = "seen items excluded" if eval_config.exclude_seen else "seen items kept"
    if eval_config.sampled_negatives:
        ranking = (
            f"SAMPLED ranking against {eval_config.sampled_negatives} "
            f"{eval_config.sampling} negatives (not comparable to full ranking)"
        )
    else:
        ranking = "full-catalogue ranking"
    window = ""
    if eval_config.targets_after:
        since = dt.datetime.fromtimestamp(eval_config.targets_after, dt.UTC)
        window = f", held-out events after {since:%Y-%m-%d %H:%M:%S} UTC"
    return f"{ranking}, {seen}{window}"


Scorer = Callable[[ModelInputs], torch.Tensor]  # model inputs -> [B, vocab] scores


def model_scorer(model: Bert4Rec, device: torch.device, vocab_size: int = 0) -> Scorer:
    """Score with a model in eval mode (the caller restores training mode).

    ``vocab_size``: the data's, when it is larger than the model's (a dataset appended to
    since the model was trained, as the retraining gate scores the current model on): items
    the model never saw are left out of its inputs (PAD, which attention ignores) and get
    ``-inf`` scores, so it is judged on the same rows, unable to recommend them.
    """
    known = model.config.vocab_size

    def score(inputs: ModelInputs) -> torch.Tensor:
        model.eval()
        scores = model.score_next(*model_tensors(inputs, known, device))
        return F.pad(scores.float(), (0, max(0, vocab_size - known)), value=float("-inf"))

    return score


def model_tensors(inputs: ModelInputs, known: int, device: torch.device) -> tuple:
    """``inputs`` as the model's ``(items, time_buckets, age_buckets, rating_buckets)``
    tensors, items the model does not know (index ``>= known``) replaced by PAD."""
    tensor = partial(torch.as_tensor, device=device)
    items = tensor(inputs.items)
    ages, rated = inputs.age_buckets, inputs.rating_buckets
    return (
        items.masked_fill(items >= known, PAD_INDEX),
        tensor(inputs.time_buckets),
        None if ages is None else tensor(ages),
        None if rated is None else tensor(rated),
    )


def popularity_scorer(popularity: np.ndarray, device: torch.device) -> Scorer:
    """The most-popular baseline: every user gets the same training-frequency scores."""
    counts = torch.as_tensor(popularity, dtype=torch.float32, device=device)

    def score(inputs: ModelInputs) -> torch.Tensor:
        return counts.expand(len(inputs.items), -1)

    return score


@torch.no_grad()
def evaluation_sums(
    scorer: Scorer,
    batches: Iterable[dict[str, np.ndarray]],
    eval_config: EvalConfig,
    max_len: int,
    num_time_buckets: int,
    device: torch.device,
    popularity: np.ndarray | None = None,
    event_ages: bool = False,
    exposure: Exposure | None = None,
    rating_scale: RatingScale | None = None,
    ranks: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Sum HR/NDCG/MRR@k over validation or test rows (``count`` holds the row count);
    ``event_ages``: the inputs include the events' age buckets (a model that reads them);
    ``exposure``: also tally each row's top-k list (beyond-accuracy figures);
    ``rating_scale``: the inputs include the events' ratings (a model with a rating head);
    ``ranks``: also append each batch's ``[B]`` target ranks here (a rank distribution)."""
    rng = np.random.default_rng(eval_config.seed)
    sums: dict[str, float] = defaultdict(float)
    for batch in batches:
        if len(batch[schema.TARGET_ITEM]) == 0:
            continue
        inputs = evaluation_inputs(batch, max_len, num_time_buckets, event_ages, rating_scale)
        scores = scorer(inputs)
        # A copy: Arrow hands out read-only arrays, which torch refuses to wrap.
        targets = torch.tensor(batch[schema.TARGET_ITEM], dtype=torch.long, device=device)
        seen = _seen_items(batch, device) if eval_config.exclude_seen else None
        batch_ranks = _ranks(scores, targets, seen, eval_config, rng, popularity)
        if exposure is not None:
            exposure.add(scores, seen)
        if ranks is not None:
            ranks.append(batch_ranks.cpu())
        for name, value in ranking_metric_sums(batch_ranks, eval_config.ks).items():
            sums[name] += value
    return dict(sums)


def _seen_items(batch: dict[str, np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [torch.tensor(h, dtype=torch.long, device=device) for h in batch[schema.ITEMS]]


def _ranks(scores, targets, seen, eval_config: EvalConfig, rng, popularity) -> torch.Tensor:
    if not eval_config.sampled_negatives:
        return target_ranks(scores, targets, seen)
    negatives = sample_negatives(
        eval_config.sampled_negatives,
        targets,
        seen,
        scores.shape[1],
        rng,
        popularity if eval_config.sampling == "popularity" else None,
    )
    return sampled_target_ranks(scores, targets, negatives.to(scores.device))
