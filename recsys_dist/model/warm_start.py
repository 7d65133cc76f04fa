"""Warm start: a new model begins from a trained parent, grown to a larger catalogue.

Retraining on new events should not relearn what the parent knows. Every tensor of the
encoder and head is copied from the parent (the shapes must match: same width, depth, heads,
``max_len``, time buckets). The item table, the output bias and the rating head's item
bias are the exception: a row per
item of the NEW vocabulary, copied from the parent's row of the same item, and for an item the
parent never saw, the mean of its peers' rows (items of its catalogue categories the parent
knew) or, without any, the mean of all the parent's items: a cold item starts where its kind
of item is, not at noise the softmax would have to climb out of. With a vocabulary that only
grows (``prepare --append``) every known item keeps its index, so the copy is the identity on
them; the mapping works for any vocabulary all the same. A model with item text keeps its
own ``item_text`` buffer, the text matrix of the NEW vocabulary (the trainer fills it before
the warm start); the projection of the text is copied like any other weight, or, from a
parent without item text, starts at zero (the new model first scores as its parent did).

Pure torch + numpy; the caller (training) works out the mapping from the vocabularies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from recsys_dist.errors import UserInputError
from recsys_dist.model.bert4rec import Bert4Rec
from recsys_dist.schema import NUM_SPECIAL_TOKENS

ITEM_ROWS = (
    "bert.embeddings.word_embeddings.weight",
    "output_bias",
    "rating_head.item_bias.weight",  # with a rating head
)
# Computed for the model's own vocabulary, not learned: kept as it is, never copied.
OWN_ROWS = ("item_text",)  # with model.item_text
# What a model with item text adds to an ID-only parent: started at zero, so the warm-started
# model scores exactly as its parent did until training has learned what the text adds.
TEXT_ONLY = ("text_projection.weight", "item_text")


@dataclass(frozen=True)
class WarmStart:
    """What :func:`warm_start` did: items copied, new items from peers, new items from the mean."""

    copied: int
    from_peers: int
    from_mean: int


@torch.no_grad()
def warm_start(
    model: Bert4Rec,
    parent: Bert4Rec,
    parent_rows: np.ndarray,
    peers: Mapping[int, np.ndarray] | None = None,
) -> WarmStart:
    """Overwrite ``model``'s weights with ``parent``'s, growing the item rows.

    Args:
        model: The new model (its vocabulary's size); changed in place.
        parent: The trained model to start from.
        parent_rows: ``[V]``: for each of ``model``'s vocabulary rows, the parent's row of the
            same item, or -1 for an item the parent never saw (PAD and MASK map to themselves).
        peers: New row -> parent rows to average for it (its catalogue peers); optional.

    Raises:
        UserInputError: If the parent does not fit (:func:`check_fits`).
        ValueError: If the mapping does not fit.
    """
    parent_rows = np.ascontiguousarray(parent_rows, np.int64)
    vocab, parent_vocab = model.config.vocab_size, parent.config.vocab_size
    if parent_rows.shape != (vocab,) or parent_rows.max(initial=-1) >= parent_vocab:
        raise ValueError(f"parent_rows must be [{vocab}] rows of the parent's {parent_vocab}")
    own, inherited = model.state_dict(), parent.state_dict()
    check_fits(_shapes(own), _shapes(inherited))
    if _adds_text(own, inherited):
        own["text_projection.weight"].zero_()
        own = {name: tensor for name, tensor in own.items() if name not in TEXT_ONLY}
    for name, tensor in own.items():
        if name not in OWN_ROWS and name not in ITEM_ROWS:
            tensor.copy_(inherited[name])
    known = parent_rows >= 0
    peers = {row: rows for row, rows in (peers or {}).items() if not known[row] and len(rows)}
    for name in (name for name in ITEM_ROWS if name in own):
        own[name].copy_(_grown(inherited[name], parent_rows, peers))
    new = int((~known[NUM_SPECIAL_TOKENS:]).sum())
    return WarmStart(int(known[NUM_SPECIAL_TOKENS:].sum()), len(peers), new - len(peers))


def check_fits(own: Mapping[str, tuple[int, ...]], inherited: Mapping[str, tuple[int, ...]]):
    """Raise :class:`UserInputError` unless a model with tensors of shapes ``own`` (name ->
    shape) can start from a parent with ``inherited``: the same tensors (less the text input
    a model with item text adds to a parent without), each of the same shape but the item
    rows. A user error: no retry of the same start can succeed.

    Pure shapes, so the trainer checks a warm start before any worker starts (shapes of
    models built on the ``meta`` device), and :func:`warm_start` checks the same way.
    """
    if _adds_text(own, inherited):
        own = {name: shape for name, shape in own.items() if name not in TEXT_ONLY}
    if own.keys() != inherited.keys():
        raise UserInputError(
            f"the parent's tensors differ: {sorted(own.keys() ^ inherited.keys())}; "
            "warm start needs the same model options (e.g. model.use_event_ages, "
            "model.pre_norm, model.head_transform)"
        )
    for name, shape in own.items():
        if name not in OWN_ROWS and name not in ITEM_ROWS and shape != inherited[name]:
            raise UserInputError(
                f"{name}: the parent's shape {tuple(inherited[name])} differs from "
                f"{tuple(shape)}; warm start needs the same model shape and max_len"
            )


def _adds_text(own: Mapping, inherited: Mapping) -> bool:
    """Whether the new model has item text and the parent none (its projection starts at 0)."""
    return "text_projection.weight" in own and not any(name in inherited for name in TEXT_ONLY)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _grown(rows: torch.Tensor, parent_rows: np.ndarray, peers: Mapping[int, np.ndarray]):
    """``[V, ...]``: the parent's row of each known item, the peers' mean or the items' mean."""
    items_mean = rows[NUM_SPECIAL_TOKENS:].mean(dim=0)
    grown = items_mean.expand(len(parent_rows), *rows.shape[1:]).clone()
    known = np.flatnonzero(parent_rows >= 0)
    grown[torch.from_numpy(known)] = rows[torch.from_numpy(parent_rows[known])]
    for row, members in peers.items():
        grown[row] = rows[torch.from_numpy(np.asarray(members, np.int64))].mean(dim=0)
    return grown
