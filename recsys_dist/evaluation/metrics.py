"""Ranking metrics for next-item prediction, batched and vectorised in torch.

The protocol: rank the held-out target among all items (or among sampled negatives), excluding
the special tokens and, optionally, items the user has already seen. Workers return metric
SUMS plus a count so that a plain ``all_reduce(SUM)`` gives exact global means however the
users were sharded; :func:`finalize_metrics` divides once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from recsys_dist.errors import UserInputError
from recsys_dist.schema import NUM_SPECIAL_TOKENS

Seen = Sequence[torch.Tensor] | torch.Tensor | None


def seen_mask(seen: Seen, batch: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """``[B, V]`` bool mask of seen items, from per-row index tensors or a ready mask.

    Index lists may contain PAD/MASK (e.g. padded histories); those columns are excluded anyway.
    """
    if seen is None:
        return torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
    if isinstance(seen, torch.Tensor):
        if seen.shape != (batch, vocab_size) or seen.dtype != torch.bool:
            raise ValueError(
                f"seen mask must be bool [{batch}, {vocab_size}], got {seen.dtype} "
                f"{tuple(seen.shape)}"
            )
        return seen.to(device)
    if len(seen) != batch:
        raise ValueError(f"got {len(seen)} seen lists for a batch of {batch}")
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seen]
    lengths = torch.tensor([len(r) for r in rows])
    row_index = torch.repeat_interleave(torch.arange(batch), lengths).to(device)  # [S]
    cols = torch.cat(rows).to(device) if rows else torch.zeros(0, dtype=torch.long)  # [S]
    mask = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
    mask[row_index, cols] = True
    return mask


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: Seen = None) -> torch.Tensor:
    """1-based rank of each target among all real items: ``1 + #items scoring strictly higher``.

    Args:
        scores: ``[B, V]`` item scores (e.g. :meth:`Bert4Rec.score_next`).
        targets: ``[B]`` held-out items, each ``>= NUM_SPECIAL_TOKENS``.
        seen: Items to drop from the ranking (a user's history): ``B`` 1-D index tensors or a
            ``[B, V]`` bool mask. The target itself is never dropped (re-consumption counts).

    Returns:
        ``[B]`` int64 ranks. Ties are resolved in the target's favour, except that a target
        the model cannot score (NaN, or ``-inf``: an item it never saw) ranks last: a model
        whose scores went NaN, or one judged on items it does not know, must never look good.
    """
    batch, vocab_size = _check_scores(scores, targets)
    targets = targets.to(scores.device)
    rows = torch.arange(batch, device=scores.device)
    excluded = seen_mask(seen, batch, vocab_size, scores.device).clone()  # [B, V]
    excluded[:, :NUM_SPECIAL_TOKENS] = True
    excluded[rows, targets] = False
    target_scores = scores[rows, targets][:, None]  # [B, 1]
    higher = (scores > target_scores) & ~excluded  # [B, V]
    unscorable = ~torch.isfinite(target_scores[:, 0]) & (target_scores[:, 0] != float("inf"))
    last = (~excluded).sum(dim=1)  # every other candidate item above it
    return torch.where(unscorable, last, 1 + higher.sum(dim=1))


def sampled_target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """1-based rank of each target among itself and its ``N`` sampled negatives.

    Args:
        scores: ``[B, V]`` item scores.
        targets: ``[B]`` held-out items.
        negatives: ``[B, N]`` items to rank against (see :func:`sample_negatives`).

    Returns:
        ``[B]`` int64 ranks in ``1 .. N + 1``.
    """
    batch, _ = _check_scores(scores, targets)
    if negatives.dim() != 2 or negatives.shape[0] != batch:
        raise ValueError(f"negatives must be [{batch}, N], got {tuple(negatives.shape)}")
    target_scores = scores.gather(1, targets.to(scores.device)[:, None])  # [B, 1]
    negative_scores = scores.gather(1, negatives.to(scores.device))  # [B, N]
    return 1 + (negative_scores > target_scores).sum(dim=1)


def sample_negatives(
    num: int,
    targets: torch.Tensor,
    seen: Seen,
    vocab_size: int,
    rng: torch.Generator | np.random.Generator,
    popularity: np.ndarray | None = None,
) -> torch.Tensor:
    """Sample ``num`` distinct negatives per row, excluding specials, the target and seen items.

    Args:
        num: Negatives per row.
        targets: ``[B]`` held-out items.
        seen: Items the user has interacted with (as in :func:`target_ranks`).
        vocab_size: ``V``, including the special tokens.
        rng: A torch Generator (used directly) or a numpy Generator (seeds a CPU torch one), so
            the sample is reproducible.
        popularity: ``[V]`` non-negative weights (e.g. training counts) for popularity-
            proportional sampling; ``None`` samples uniformly.

    Returns:
        ``[B, num]`` int64 item indices on ``targets.device``. Memory is ``B x V`` floats, so
        call it per evaluation batch.
    """
    batch = targets.shape[0]
    generator = _torch_generator(rng)
    device = generator.device
    weights = torch.ones(vocab_size, dtype=torch.float32, device=device)  # [V]
    if popularity is not None:
        if np.shape(popularity) != (vocab_size,):
            raise ValueError(
                f"popularity must have shape ({vocab_size},), got {np.shape(popularity)}"
            )
        weights = torch.as_tensor(np.asarray(popularity, dtype=np.float32), device=device)
    excluded = seen_mask(seen, batch, vocab_size, device).clone()  # [B, V]
    excluded[:, :NUM_SPECIAL_TOKENS] = True
    excluded[torch.arange(batch, device=device), targets.to(device)] = True
    row_weights = weights[None].expand(batch, -1).masked_fill(excluded, 0.0)  # [B, V]
    available = int((row_weights > 0).sum(dim=1).min()) if batch else num
    if available < num:
        raise UserInputError(  # the catalogue is too small for the protocol asked for
            f"eval.sampled_negatives (--sampled) = {num}, but a user has only {available} "
            "unseen items to sample from: ask for fewer, or rank the full catalogue (0)"
        )
    if batch == 0:
        return torch.zeros(0, num, dtype=torch.long, device=targets.device)
    sampled = torch.multinomial(row_weights, num, replacement=False, generator=generator)
    return sampled.to(targets.device)  # [B, num]


def ranking_metric_sums(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Sums of HR@k, NDCG@k and MRR@k over the batch, plus ``count``, ready to all-reduce.

    For one target (a single relevant item) at rank r: HR@k = [r <= k],
    NDCG@k = 1 / log2(r + 1) if r <= k, MRR@k = 1 / r if r <= k.
    """
    ranks = ranks.to(torch.float64)
    sums: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k  # [B]
        sums[f"hr@{k}"] = float(hit.sum())
        sums[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks + 1), 0.0).sum())
        sums[f"mrr@{k}"] = float(torch.where(hit, 1.0 / ranks, 0.0).sum())
    sums["count"] = float(ranks.numel())
    return sums


def finalize_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Means from (all-reduced) sums; ``count`` is passed through unchanged."""
    count = sums.get("count", 0.0)
    if not count or math.isnan(count):
        raise ValueError(f"no evaluated rows (count={count}); cannot average {sorted(sums)}")
    return {name: (value if name == "count" else value / count) for name, value in sums.items()}


def _check_scores(scores: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Validate ``[B, V]`` scores against ``[B]`` targets; return ``(B, V)``."""
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [B, V] and targets [B]; got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    batch, vocab_size = scores.shape
    if batch and (int(targets.min()) < NUM_SPECIAL_TOKENS or int(targets.max()) >= vocab_size):
        raise ValueError(
            f"targets must be in [{NUM_SPECIAL_TOKENS}, {vocab_size}), got min "
            f"{int(targets.min())} max {int(targets.max())}"
        )
    return batch, vocab_size


def _torch_generator(rng: torch.Generator | np.random.Generator) -> torch.Generator:
    """Use a torch Generator as is; derive a seeded CPU one from a numpy Generator."""
    if isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, np.random.Generator):
        return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    raise TypeError(f"rng must be a torch.Generator or numpy Generator, got {type(rng).__name__}")
