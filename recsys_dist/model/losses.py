"""Training losses of the tied item head: the exact full softmax and a sampled softmax.

Each returns one loss per row, summed by the caller.

* :func:`full_softmax_losses`: cross-entropy against every vocabulary entry. Exact, but its logits
  are [rows x vocabulary]: at 1M items, one batch's are gigabytes.
* :func:`sampled_softmax_losses`: cross-entropy of each row's target against S negatives shared by
  the batch, drawn from a proposal Q by :func:`sample_negatives`: [rows x (1 + S)] logits. Every
  logit, the target's included, is corrected by ``- log Q(item)`` (Bengio & Senecal 2008; Jean
  et al. 2015; Yi et al. 2019): without it the loss would also learn Q (items Q favours would
  be pushed down for being drawn often); with it, it approaches the full softmax as S grows. A
  negative equal to the row's target (an accidental hit) is masked out, so the target is never
  its own negative.
* :func:`chunked_losses`: either loss over chunks of rows, each recomputed in the backward
  pass, so the whole batch's logits never exist at once.
* :func:`truncated_sum`: the batch's loss without its largest share (denoising, off by default).

Pure torch (and numpy for the sampler): no Ray, no DeepSpeed, no device moves inside a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from recsys_dist.schema import NUM_SPECIAL_TOKENS


@dataclass(frozen=True)
class NegativeSample:
    """Negatives shared by every labelled position of a batch, and the proposal they came from.

    Attributes:
        ids: ``[S]`` int64 item indices drawn (with replacement) from Q; real items only.
        log_q: ``log Q(item)``: a 0-d tensor when Q is uniform over the real items (one value
            for every item), else ``[V]`` over the whole vocabulary (``-inf`` at PAD and MASK).
    """

    ids: torch.Tensor
    log_q: torch.Tensor

    def to(self, device: str | torch.device) -> NegativeSample:
        """The same sample on ``device`` (called by the training loop, never in ``forward``)."""
        return NegativeSample(self.ids.to(device), self.log_q.to(device))

    def log_q_of(self, items: torch.Tensor) -> torch.Tensor:
        """``log Q`` at ``items`` (any shape, same shape out)."""
        if self.log_q.dim() == 0:
            return self.log_q.expand(items.shape)
        return self.log_q[items]


def sample_negatives(
    rng: np.random.Generator,
    vocab_size: int,
    count: int,
    popularity: np.ndarray | None = None,
    alpha: float = 1.0,
) -> NegativeSample:
    """Draw ``count`` negatives, with replacement, from a proposal Q over the real items.

    Two proposals. Uniform (``popularity=None``): ``Q(i) = 1 / (V - 2)`` for ids ``2 .. V-1``;
    cheap at any V, and the only one the training loop uses (``train.loss=sampled``).
    Popularity: ``Q(i) ∝ max(count_i, 1) ** alpha`` with ``popularity`` the ``[V]`` counts of
    ``Vocabulary.popularity()`` (alpha 0 is uniform, 1 follows frequency, word2vec used 0.75);
    the floor at one keeps every real item drawable, so a target's ``log Q`` is finite. It costs
    O(V) per call (cumulative sums), so a caller drawing every step may prefer uniform.

    Args:
        rng: Source of randomness; the sample is a pure function of its state and the arguments.
        vocab_size: V, the vocabulary size including PAD and MASK.
        count: S, negatives to draw.
        popularity: ``[V]`` non-negative counts for the popularity proposal; None for uniform.
        alpha: Exponent of the popularity proposal.

    Returns:
        A :class:`NegativeSample` of CPU tensors (``log_q`` 0-d for uniform, ``[V]`` otherwise).

    Raises:
        ValueError: If ``count`` is not positive, V has no real item, or ``popularity`` is not
            ``[V]``.
    """
    first = NUM_SPECIAL_TOKENS
    if count <= 0 or vocab_size <= first:
        raise ValueError(f"need count > 0 and vocab_size > {first}, got {count}, {vocab_size}")
    if popularity is None:
        ids = rng.integers(first, vocab_size, size=count, dtype=np.int64)
        log_q = torch.tensor(-math.log(vocab_size - first), dtype=torch.float32)
        return NegativeSample(torch.from_numpy(ids), log_q)
    if np.shape(popularity) != (vocab_size,):
        raise ValueError(f"popularity must have shape ({vocab_size},), got {np.shape(popularity)}")
    weights = np.maximum(np.asarray(popularity, dtype=np.float64)[first:], 1.0) ** alpha
    cumulative = np.cumsum(weights)  # [V - 2]
    drawn = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    ids = first + np.minimum(drawn, len(weights) - 1)  # a product rounding up to the total
    log_q = np.full(vocab_size, -np.inf)
    log_q[first:] = np.log(weights) - np.log(cumulative[-1])
    return NegativeSample(
        torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(log_q.astype(np.float32))
    )


def full_softmax_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]`` cross-entropies of ``[N, V]`` logits (in float32) against ``[N]`` targets."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def sampled_softmax_losses(
    head: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    negatives: NegativeSample,
) -> torch.Tensor:
    """Per-row log-Q-corrected sampled-softmax cross-entropy, the target at index 0 of each row.

    Args:
        head: ``[N, H]`` hidden states after the head's transform (what meets the item table).
        targets: ``[N]`` target items.
        weight: ``[V, H]`` item table (the tied embedding).
        bias: ``[V]`` output bias.
        negatives: S negatives shared by the N rows, and their proposal.

    Returns:
        ``[N]`` losses, one per row (chunks concatenate to the whole).
    """
    ids = negatives.ids  # [S]
    negative_logits = F.linear(head, weight[ids], bias[ids]).float()  # [N, S]
    target_logits = ((head * weight[targets]).sum(-1) + bias[targets]).float()  # [N]
    negative_logits = negative_logits - negatives.log_q_of(ids)  # [N, S]
    target_logits = target_logits - negatives.log_q_of(targets)  # [N]
    hits = targets[:, None] == ids[None, :]  # [N, S]: a negative that is the row's target
    negative_logits = negative_logits.masked_fill(hits, float("-inf"))
    logits = torch.cat([target_logits[:, None], negative_logits], dim=1)  # [N, 1 + S]
    return F.cross_entropy(logits, targets.new_zeros(len(targets)), reduction="none")


def rows_per_chunk(max_logits: int, width: int, rows: int) -> int:
    """Rows of ``width`` logits each that fit in ``max_logits`` (at least one; all ``rows``
    when ``max_logits`` is 0, no limit)."""
    return max(1, max_logits // width) if max_logits else max(1, rows)


def chunked_losses(
    row_losses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    rows: int,
) -> torch.Tensor:
    """``row_losses(hidden, targets)`` (``[N]``) computed over chunks of ``rows`` rows.

    With more than one chunk, each is wrapped in ``torch.utils.checkpoint``: its logits are
    freed after the forward and recomputed in the backward pass, so only one chunk's exist at a
    time. The result (and its gradient) is the same as in one piece; only memory and time differ.
    """
    if len(targets) <= rows:
        return row_losses(hidden, targets)
    return torch.cat(
        [
            checkpoint(row_losses, h, t, use_reentrant=False)
            for h, t in zip(hidden.split(rows), targets.split(rows), strict=True)
        ]
    )


def truncated_sum(losses: torch.Tensor, drop_share: float) -> torch.Tensor:
    """The sum of ``[N]`` losses without the ``drop_share`` largest (Truncated Cross-Entropy,
    Wang et al., WSDM'21): in implicit feedback, the positions a model finds least probable
    are the likeliest noise (an accidental click), and clean ones are learned first, so
    leaving out the hardest share of each batch once the model has warmed up keeps noise from
    being memorised. ``drop_share`` 0 is the plain sum."""
    dropped = int(drop_share * len(losses))
    if dropped <= 0:
        return losses.sum()
    kept = len(losses) - dropped
    return torch.topk(losses, kept, largest=False, sorted=False).values.sum()
