"""BERT4Rec: a transformer over item sequences, trained by cloze or by next-item prediction.

The encoder is ``transformers.BertModel`` (post-norm), or with ``config.pre_norm`` HF's
``RobertaPreLayerNormModel``, the same blocks with each LayerNorm moved before its branch and
one after the last block; this file adds what BERT4Rec needs on top:

* the input is ``item embedding (+ time-gap embedding)``, fed as ``inputs_embeds`` so that BERT
  still adds position embeddings, LayerNorm and dropout;
* the output head dots each position's state with the item embedding (the decoder TIED to it,
  so every item has one vector, used both to read and to score it), plus a per-item bias; with
  ``config.head_transform`` the state first goes through BERT's MLM transform (dense -> GELU
  -> LayerNorm), which cost Amazon Beauty 0.007 of its 0.057 test NDCG@10 (docs/benchmarks.md);
* the loss is a full softmax over the catalogue, computed only at the labelled positions, in
  chunks of rows whose logits are recomputed in the backward pass when the catalogue is large
  (so [positions x items] logits never exist at once); or, given a :class:`NegativeSample`, a
  sampled softmax with log-Q correction against negatives shared by the batch (see
  :mod:`recsys_dist.model.losses`).

Two objectives share the encoder (``config.objective``):

* ``cloze`` (BERT4Rec): bidirectional attention; random positions are replaced by MASK and
  predicted from both sides.
* ``causal`` (SASRec with full cross-entropy): a causal attention mask; every position
  predicts the NEXT item. The time-gap input of position t is the gap from event t to the
  event it predicts (to the query time at inference), so the model knows when it is asked.

With ``config.item_text`` every item's vector, wherever it is read (:meth:`Bert4Rec.item_table`),
is its ID embedding plus a learned projection of its text embedding (``item_text``, a
``[V, D]`` buffer the trainer fills and the weights file carries), so an item no training
event showed is still placed by its title and categories. ``config.text_id_dropout`` drops a
share of the ID rows at each training step, so the projection learns to place items alone.

With ``config.use_event_ages`` the attention logits also get a learned per-head bias of each
key event's log2-bucketed age at the time the query position predicts for (a relative time
bias, as in TiSASRec and HSTU), passed to BERT as a 4-D additive attention mask.

Sequences are left-padded with PAD (0); position ids are right-aligned so that the most recent
event is always at position ``max_len - 1``, whatever the input length. At inference the caller
appends MASK after the history (with the query time) and :meth:`Bert4Rec.score_next` reads the
scores there; a causal model reads them at the last event instead, given the query's gap.

Pure torch + transformers: no Ray, no DeepSpeed, no device moves inside ``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    RobertaPreLayerNormConfig,
    RobertaPreLayerNormModel,
)

from recsys_dist.data.masking import IGNORE_INDEX
from recsys_dist.model.configuration import Bert4RecConfig
from recsys_dist.model.losses import (
    NegativeSample,
    chunked_losses,
    full_softmax_losses,
    rows_per_chunk,
    sampled_softmax_losses,
    truncated_sum,
)
from recsys_dist.schema import MASK_INDEX, NUM_SPECIAL_TOKENS, PAD_INDEX

WEIGHTS_FILE = "model.safetensors"


@dataclass
class Bert4RecOutput:
    """What :meth:`Bert4Rec.forward` returns.

    Attributes:
        loss: Mean cross-entropy over labelled positions, or ``None`` without labels.
        logits: ``[N, V]`` at the N labelled positions (row-major order of ``labels != -100``)
            when labels are given, else ``[B, L, V]``. PAD and MASK columns are ``-inf``.
            ``None`` when the loss was computed in chunks (the logits never existed at once)
            or sampled (only the sampled items' logits did).
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    rating_loss: torch.Tensor | None = None  # mean squared error over rated labelled positions


_START_DECAY = 0.5 ** (1 / 4)  # the rating prior's decay per event: a half-life of 4 events


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class RatingHead(nn.Module):
    """Predicted rating of item ``j`` from a position's hidden state ``h`` and the user's recent
    deviation ``d`` from the items' usual ratings:
    ``mean + w * d + user(h) + item_bias[j] + <proj(h), E[j]>`` with ``E`` the model's one
    item table, so the rating and the next item are read off the same item vectors (matrix
    factorisation whose user factor is the sequence state).

    ``d`` (:meth:`prior`) is the classic user bias made recent: the mean of the seen ratings'
    residuals (rating - mean - item_bias), weighted by ``decay ** events_back`` and shrunk
    toward 0 by a few pseudo-events; decay and shrinkage are learned. Users rate in sessions,
    so their latest ratings say far more about the next one than their lifetime mean
    (ml-100k's last rating: user+item biases from the last 3-5 ratings RMSE 0.964-0.973,
    from all of them 1.034; docs/benchmarks.md). It is given outright rather than left for
    attention to average out of the rating embeddings."""

    def __init__(self, config: Bert4RecConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.user_bias = nn.Linear(hidden, 1)
        self.item_bias = nn.Embedding(config.vocab_size, 1)
        # [1], not 0-d scalars: DeepSpeed's broadcast of the weights views every one as bytes.
        self.mean = nn.Parameter(torch.full((1,), float(config.rating_mean)))
        self.prior_weight = nn.Parameter(torch.ones(1))
        # The prior's decay per event back (sigmoid; starts at a half-life of 4 events) and its
        # shrinkage in pseudo-events (exp; starts at 2).
        self.decay_logit = nn.Parameter(torch.full((1,), _logit(_START_DECAY)))
        self.log_shrinkage = nn.Parameter(torch.full((1,), math.log(2.0)))
        nn.init.normal_(self.proj.weight, std=config.initializer_range)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.user_bias.bias)
        nn.init.zeros_(self.item_bias.weight)

    def prior(self, values: torch.Tensor, rated: torch.Tensor, items, causal: bool):
        """``[B, L]`` ratings (0 where ``rated`` is 0) of ``[B, L]`` items → ``[B, L]``: each
        position's recent deviation ``d`` over the rated events it sees (a causal position:
        itself and those before it; a cloze one: every other event, by distance)."""
        residuals = (values - self.mean - self.item_bias(items)[..., 0]) * rated  # [B, L]
        steps = torch.arange(values.shape[1], device=values.device)
        back = steps[:, None] - steps[None, :]  # [L, L]: events from s back to t
        weights = torch.exp(back.abs() * F.logsigmoid(self.decay_logit))  # decay ** |t - s|
        if causal:
            weights = weights * (back >= 0)
        sums, counts = residuals @ weights.T, rated @ weights.T  # [B, L]
        return sums / (counts + self.log_shrinkage.exp())

    def of_items(self, hidden, items, table, prior) -> torch.Tensor:
        """``[N, H]`` states, ``[N]`` items and ``[N]`` priors (seen mean - data mean) →
        ``[N]`` predicted ratings."""
        factor = (self.proj(hidden) * table[items]).sum(-1)  # [N]
        return self._user(hidden, prior)[:, 0] + self.item_bias(items)[:, 0] + factor

    def of_all(self, hidden: torch.Tensor, table: torch.Tensor, prior: torch.Tensor):
        """``[B, H]`` states and ``[B]`` priors → ``[B, V]`` ratings of every vocabulary entry."""
        factor = self.proj(hidden) @ table.T  # [B, V]
        return self._user(hidden, prior) + self.item_bias.weight[:, 0] + factor

    def _user(self, hidden: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``[N, 1]``: the intercept, the recent-ratings prior and the state's user bias."""
        return self.mean + self.prior_weight * prior[:, None] + self.user_bias(hidden)


# ``config.pre_norm`` -> the HF encoder's config and model classes.
_ENCODERS = {
    False: (BertConfig, BertModel),
    True: (RobertaPreLayerNormConfig, RobertaPreLayerNormModel),
}


def position_offset(config: Bert4RecConfig) -> int:
    """The encoder's first position id: RoBERTa keeps row 0 of its position table for padding
    (zero, never trained), so a pre-norm encoder's positions start at 1."""
    return 1 if config.pre_norm else 0


def bert_config(config: Bert4RecConfig) -> BertConfig | RobertaPreLayerNormConfig:
    """The HF config of the encoder; every encoder-shaping field of ``config`` maps here."""
    config_class, _ = _ENCODERS[config.pre_norm]
    return config_class(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_len + position_offset(config),
        type_vocab_size=1,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=PAD_INDEX,
        is_decoder=config.objective == "causal",  # BERT's causal self-attention mask
        use_cache=False,
    )


class Bert4Rec(nn.Module):
    """BERT4Rec with a tied output head and optional time-gap input.

    Args:
        config: Model shape; kept as ``self.config`` and saved by :meth:`save`.
    """

    def __init__(self, config: Bert4RecConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        _, encoder_class = _ENCODERS[config.pre_norm]
        self.bert = encoder_class(bert_config(config), add_pooling_layer=False)
        self.time_embedding = (
            nn.Embedding(config.num_time_buckets, hidden) if config.use_time_gaps else None
        )
        self.age_bias = (
            nn.Embedding(config.num_time_buckets, config.num_heads)
            if config.use_event_ages
            else None
        )
        transform = config.head_transform
        self.head_dense = nn.Linear(hidden, hidden) if transform else None
        self.head_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps) if transform else None
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        # Bucket 0: the event has no rating (or it is hidden, as at a cloze MASK).
        self.rating_embedding = (
            nn.Embedding(config.num_rating_buckets + 1, hidden) if config.rating_head else None
        )
        self.rating_head = RatingHead(config) if config.rating_head else None
        # Cold start from text: a fixed [V, D] text embedding per item (zeros for PAD, MASK
        # and items without text), saved with the weights, and its trainable projection.
        text = config.item_text
        self.text_projection = nn.Linear(config.item_text_dim, hidden, bias=False) if text else None
        self.register_buffer(
            "item_text", torch.zeros(config.vocab_size, config.item_text_dim) if text else None
        )
        self._init_head_weights()

    @property
    def item_embedding(self) -> nn.Embedding:
        """The one item table: input embedding and (transposed) output decoder."""
        return self.bert.embeddings.word_embeddings

    def item_table(self, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``[V, H]``: every item's one vector, read by the input and the tied output head
        alike: its ID embedding, plus with ``config.item_text`` the projection of its text.
        ``keep_ids``: ``[V]`` 1/0 per item, 0 dropping its ID embedding (:meth:`_id_dropout`)."""
        table = self.item_embedding.weight  # [V, H]
        if keep_ids is not None:
            table = table * keep_ids[:, None]  # [V, H]
        if self.text_projection is not None:
            table = table + self.text_projection(self.item_text)  # [V, H]
        return table

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``[..., H]``: the :meth:`item_table` rows of ``items``, without building the table."""
        vectors = self.item_embedding(items)  # [..., H]
        if self.text_projection is not None:
            vectors = vectors + self.text_projection(self.item_text[items])  # [..., H]
        return vectors

    def _id_dropout(self) -> torch.Tensor | None:
        """``[V]`` 1/0 per item for one training step: 0 drops the item's ID embedding
        (``config.text_id_dropout`` of them), so its vector is its text alone, as a cold
        item's is; None when nothing is dropped (evaluation, no text, no dropout)."""
        share = self.config.text_id_dropout
        if not (self.training and share and self.text_projection is not None):
            return None
        weight = self.item_embedding.weight  # [V, H]
        keep = (torch.rand(len(weight), device=weight.device) >= share).to(weight.dtype)
        keep[PAD_INDEX] = 0.0  # a zero row no gradient may move, as BERT's padding_idx keeps it
        keep[MASK_INDEX] = 1.0  # the cloze input token has no text to stand in for it
        return keep  # [V]

    @torch.no_grad()
    def drop_untrained_ids(self, untrained: torch.Tensor) -> None:
        """Zero the ID rows of the ``[V]`` bool ``untrained`` items (no training window holds
        them). Trained with ``config.text_id_dropout``, the text projection places an item
        alone; a random, never-trained ID row would only add noise to a cold item's vector.
        The softmax leaves these items out, so no gradient moves the rows again."""
        rows = untrained.clone()
        rows[:NUM_SPECIAL_TOKENS] = False
        self.item_embedding.weight[rows] = 0.0

    @torch.no_grad()
    def set_item_text(self, matrix: torch.Tensor) -> None:
        """Fill the ``item_text`` buffer with a ``[V, D]`` text embedding matrix, rows in
        vocabulary order (:func:`recsys_dist.model.text_encoder.encode_texts` of
        :func:`recsys_dist.data.item_text.item_texts`; the trainer computes it).

        Raises:
            ValueError: If the model has no text input or the matrix has another shape.
        """
        if self.item_text is None:
            raise ValueError("this model has no item text input (config.item_text is False)")
        if tuple(matrix.shape) != tuple(self.item_text.shape):
            raise ValueError(
                f"item text matrix shape {tuple(matrix.shape)} != {tuple(self.item_text.shape)}"
                " [vocab_size, item_text_dim]"
            )
        self.item_text.copy_(matrix)

    def _init_head_weights(self) -> None:
        """BERT's init for the modules ``BertModel.post_init`` does not know about."""
        std = self.config.initializer_range
        if self.head_dense is not None:
            nn.init.normal_(self.head_dense.weight, std=std)
            nn.init.zeros_(self.head_dense.bias)
        if self.time_embedding is not None:
            nn.init.normal_(self.time_embedding.weight, std=std)
        if self.age_bias is not None:
            nn.init.zeros_(self.age_bias.weight)  # starts as plain attention
        if self.rating_embedding is not None:
            nn.init.normal_(self.rating_embedding.weight, std=std)
        if self.text_projection is not None:  # text vectors start as small as ID ones
            nn.init.normal_(self.text_projection.weight, std=std)

    # --- forward ------------------------------------------------------------------------------

    def forward(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        max_logits: int = 0,
        negatives: NegativeSample | None = None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
        rating_labels: torch.Tensor | None = None,
        drop_hardest: float = 0.0,
        left_out: torch.Tensor | None = None,
    ) -> Bert4RecOutput:
        """Encode ``items`` and, given ``labels``, score and compute the loss at labelled positions.

        Args:
            items: ``[B, L]`` item indices, left-padded with PAD, MASK at cloze positions.
            time_buckets: ``[B, L]`` from ``recsys_dist.data.time_gaps.time_gap_buckets``;
                required iff ``config.use_time_gaps``.
            labels: ``[B, L]`` target items at labelled positions, ``-100`` elsewhere.
            max_logits: At most this many logits (rows x vocabulary) at once in the loss; more
                are computed in chunks of rows, each recomputed in the backward pass. 0: no
                limit. The loss is the same either way; only peak memory and time differ.
            negatives: With labels: compute a sampled softmax instead of the full one, each
                labelled position's target against these negatives (``[S]``, shared by the
                batch), every logit corrected by ``- log Q`` and accidental hits masked
                (:func:`recsys_dist.model.losses.sampled_softmax_losses`). ``max_logits`` then
                bounds rows x (1 + S). Ignored without labels.
            age_buckets: ``[B, L, L]`` from ``recsys_dist.data.time_gaps.event_age_buckets``
                (row q: each key's age at position q's prediction time); required iff
                ``config.use_event_ages``.
            rating_buckets: ``[B, L]`` rating input buckets (``RatingScale.buckets``; 0: none),
                read by a model with ``config.rating_head``; ``None``: no event rated.
            rating_labels: ``[B, L]`` float ratings of the labelled positions' targets, NaN
                where the target has none: with labels, the rating head's MSE over them is
                ``rating_loss``.
            drop_hardest: Leave this share of the labelled positions with the largest loss out
                of the next-item loss (:func:`recsys_dist.model.losses.truncated_sum`, for
                noisy logs); 0 keeps every position.
            left_out: ``[V]`` bool: items the next-item softmax leaves out (never a labelled
                target). The trainer leaves out the items no training event shows, with
                ``config.item_text``: a softmax that can only ever call them wrong would
                sink their ID rows and biases, and their text could not lift them back.

        Returns:
            :class:`Bert4RecOutput`; the head runs only on labelled positions when labels are given.
        """
        self._check_inputs(items, time_buckets, labels, age_buckets, rating_buckets)
        if negatives is not None and labels is not None:
            self._check_negatives(negatives)
        if left_out is not None and left_out.shape != (self.config.vocab_size,):
            raise ValueError(
                f"left_out shape {tuple(left_out.shape)} != [vocab_size] "
                f"({self.config.vocab_size},)"
            )
        keep_ids = self._id_dropout()  # [V] or None: one draw serves inputs and outputs
        table = None if keep_ids is None else self.item_table(keep_ids)  # [V, H]
        hidden = self.encode(items, time_buckets, age_buckets, rating_buckets, table)  # [B, L, H]
        if labels is None:
            return Bert4RecOutput(loss=None, logits=self.item_logits(hidden, table))  # [B, L, V]
        selected = labels != IGNORE_INDEX  # [B, L]
        hidden, targets = hidden[selected], labels[selected]  # [N, H], [N]
        # Once per step, not per chunk of rows: with item text it is a [V, D] x [D, H] product.
        table = self.item_table() if table is None else table  # [V, H]
        rating_loss = None
        if self.rating_head is not None and rating_labels is not None:
            prior = self.rating_prior(rating_buckets, items)[selected]  # [N]
            ratings = rating_labels[selected]  # [N]
            rating_loss = self._rating_mse(hidden, targets, ratings, prior, table)
        if left_out is not None:  # a labelled target always stays in (a finite loss)
            left_out = left_out.index_fill(0, targets, False)  # [V]
        if negatives is None:
            width = self.config.vocab_size
            loss_fn = partial(self._cross_entropies, left_out=left_out, table=table)
        else:
            width = 1 + len(negatives.ids)  # the target, then the negatives
            loss_fn = partial(
                self._sampled_cross_entropies, negatives=negatives, left_out=left_out, table=table
            )
        rows = rows_per_chunk(max_logits, width, len(targets))
        logits = None
        if negatives is None and len(targets) <= rows:
            logits = self.item_logits(hidden, table)  # [N, V], returned with the loss
            losses = loss_fn(hidden, targets, logits)  # [N]
        else:
            losses = chunked_losses(loss_fn, hidden, targets, rows)  # [N]
        kept = len(losses) - int(drop_hardest * len(losses))
        # Sum / max(kept, 1) rather than mean: an all-unlabelled batch gives 0, not NaN.
        loss = truncated_sum(losses, drop_hardest) / max(kept, 1)
        return Bert4RecOutput(loss=loss, logits=logits, rating_loss=rating_loss)

    def _rating_mse(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        ratings: torch.Tensor,
        prior: torch.Tensor,
        table: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared error of the rated ones among ``[N]`` targets (0 if none is rated).

        Every position stays in the graph (unrated ones weighted 0), so each rank's rating
        parameters get a gradient every step, as DeepSpeed's all-reduce expects.
        """
        rated = ~torch.isnan(ratings)  # [N]
        predicted = self.rating_head.of_items(hidden, targets, table, prior)
        errors = torch.where(rated, predicted - ratings.nan_to_num(), 0.0)  # [N]
        return errors.square().sum() / rated.sum().clamp(min=1)

    def _cross_entropies(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        logits: torch.Tensor | None = None,
        left_out: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N]`` cross-entropies of ``[N, H]`` hidden states against ``[N]`` targets, over
        every item but the ``[V]`` ``left_out`` ones."""
        logits = self.item_logits(hidden, table) if logits is None else logits  # [N, V]
        if left_out is not None:
            logits = logits.masked_fill(left_out, float("-inf"))  # [N, V]
        return full_softmax_losses(logits, targets)

    def _sampled_cross_entropies(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        negatives: NegativeSample,
        left_out: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N]`` sampled-softmax cross-entropies of ``[N, H]`` hidden states; the same head,
        ``left_out`` negatives masked (an ``-inf`` bias)."""
        weight = self.item_table() if table is None else table  # [V, H]
        bias = self.output_bias
        if left_out is not None:
            bias = bias.masked_fill(left_out, float("-inf"))  # [V]
        return sampled_softmax_losses(self.head(hidden), targets, weight, bias, negatives)

    @torch.no_grad()
    def score_next(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None = None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of every vocabulary entry for the item after each history.

        Both objectives take the same inputs, so every caller builds them one way.

        Args:
            items: ``[B, L]`` histories, left-padded, with MASK as the final element.
            time_buckets: ``[B, L]``, the MASK position bucketed with the query time.
            age_buckets: ``[B, L, L]``, the MASK row aged at the query time (with
                ``config.use_event_ages``).
            rating_buckets: ``[B, L]`` the events' rating buckets, 0 at MASK (with
                ``config.rating_head``; ``None``: no event rated).

        Returns:
            ``[B, V]`` logits; PAD and MASK columns are ``-inf``.
        """
        return self.item_logits(self.query_state(items, time_buckets, age_buckets, rating_buckets))

    @torch.no_grad()
    def predict_ratings(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None = None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, V]`` predicted ratings of every vocabulary entry after each history (the
        inputs of :meth:`score_next`), clipped to the data's scale.

        Raises:
            ValueError: If the model has no rating head.
        """
        state = self.query_state(items, time_buckets, age_buckets, rating_buckets)  # [B, H]
        return self.ratings_of(state, self.query_rating_prior(rating_buckets, items))

    def ratings_of(self, state: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``[B, H]`` query states and their ``[B]`` priors (:meth:`query_rating_prior`) →
        ``[B, V]`` predicted ratings, clipped to the scale."""
        if self.rating_head is None:
            raise ValueError("this model has no rating head (trained without ratings)")
        ratings = self.rating_head.of_all(state, self.item_table(), prior)  # [B, V]
        return ratings.clamp(self.config.rating_min, self.config.rating_max)

    def ratings_of_items(self, state: torch.Tensor, prior: torch.Tensor, items: torch.Tensor):
        """``[N, H]`` states, their ``[N]`` priors and ``[N]`` items → ``[N]`` predicted
        ratings, clipped to the scale: what :meth:`ratings_of` gives those items, without
        scoring the whole catalogue."""
        if self.rating_head is None:
            raise ValueError("this model has no rating head (trained without ratings)")
        ratings = self.rating_head.of_items(state, items, self.item_table(), prior)
        return ratings.clamp(self.config.rating_min, self.config.rating_max)

    def rating_prior(self, rating_buckets: torch.Tensor | None, items: torch.Tensor):
        """``[B, L]``: the recent rating deviation each position has seen
        (:meth:`RatingHead.prior`; 0 where no rating is seen)."""
        if rating_buckets is None:
            return torch.zeros(items.shape, device=items.device)
        config = self.config
        rated = (rating_buckets > 0).float()  # [B, L]
        step = (config.rating_max - config.rating_min) / max(config.num_rating_buckets - 1, 1)
        values = (config.rating_min + (rating_buckets - 1).clamp(min=0) * step) * rated
        return self.rating_head.prior(values, rated, items, config.objective == "causal")

    def query_rating_prior(self, rating_buckets: torch.Tensor | None, items: torch.Tensor):
        """``[B]``: the prior at the query, over every rated history event: a causal model's
        last event's (as its state, :meth:`query_state`), a cloze model's MASK's."""
        if self.config.objective == "causal" and rating_buckets is not None:
            rating_buckets, items = rating_buckets[:, :-1], items[:, :-1]
        return self.rating_prior(rating_buckets, items)[:, -1]

    def query_state(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None = None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, H]``: the hidden state that predicts the item after each history (the MASK
        position's; a causal model's last event's, given the query's gap)."""
        self._check_inputs(items, time_buckets, None, age_buckets, rating_buckets)
        if self.config.objective == "causal":
            # The last event predicts what follows it, given the gap to the query (the MASK
            # position's bucket) and the events' ages then: the same shift as in training.
            # Each event keeps its own rating, as in training.
            items = items[:, :-1]  # [B, L - 1]
            time_buckets = time_buckets[:, 1:] if time_buckets is not None else None
            age_buckets = age_buckets[:, 1:, :-1] if age_buckets is not None else None
            rating_buckets = rating_buckets[:, :-1] if rating_buckets is not None else None
        return self.encode(items, time_buckets, age_buckets, rating_buckets)[:, -1]  # [B, H]

    def encode(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextual hidden states ``[B, L, H]`` of the (already checked) inputs; ``table``:
        the step's :meth:`item_table`, where it differs from the stored one (ID dropout)."""
        length = items.shape[1]
        embeds = self.item_vectors(items) if table is None else F.embedding(items, table)
        if self.time_embedding is not None:
            embeds = embeds + self.time_embedding(time_buckets)  # [B, L, H]
        if self.rating_embedding is not None:
            if rating_buckets is None:  # no event rated
                rating_buckets = torch.zeros_like(items)
            embeds = embeds + self.rating_embedding(rating_buckets)  # [B, L, H]
        # Right-aligned positions: the newest event is at max_len - 1 for any input length L.
        first = self.config.max_len - length + position_offset(self.config)
        position_ids = torch.arange(first, first + length, device=items.device)[None]  # [1, L]
        out = self.bert(
            inputs_embeds=embeds,
            attention_mask=self._attention_mask(items, age_buckets, embeds.dtype),
            position_ids=position_ids,
        )
        return out.last_hidden_state  # [B, L, H]

    def _attention_mask(
        self, items: torch.Tensor, age_buckets: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """BERT's ``[B, L]`` key mask (PAD keys ignored; BERT adds the causal part), or with
        event ages the whole additive ``[B, heads, L, L]`` mask: the age bias where a query
        may look, the dtype's minimum where it may not (BERT returns a 4-D mask as it is)."""
        keys = items != PAD_INDEX  # [B, L]
        if self.age_bias is None:
            return keys.long()
        length = items.shape[1]
        allowed = keys[:, None, None, :]  # [B, 1, 1, L]
        if self.config.objective == "causal":
            causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
            allowed = allowed & causal  # [B, 1, L, L]
        # A PAD query (no real key before it) attends to itself: no row is all masked.
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=items.device)
        bias = self.age_bias(age_buckets).permute(0, 3, 1, 2).to(dtype)  # [B, heads, L, L]
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H] -> [..., H]``: what is dotted with the item table; the state itself, or
        with ``config.head_transform`` the MLM transform of it (dense -> GELU -> LayerNorm)."""
        if self.head_dense is None:
            return hidden
        return self.head_norm(F.gelu(self.head_dense(hidden)))

    def item_logits(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The tied head: ``[..., H] -> [..., V]``, ``-inf`` at the special tokens.
        ``table``: :meth:`item_table`, where the caller has it already."""
        h = self.head(hidden)  # [..., H]
        table = self.item_table() if table is None else table  # [V, H]
        logits = F.linear(h, table, self.output_bias)  # [..., V]
        # PAD and MASK (columns 0 .. NUM_SPECIAL_TOKENS - 1) are never targets.
        logits[..., :NUM_SPECIAL_TOKENS] = float("-inf")
        return logits

    # --- input checks -------------------------------------------------------------------------

    def _check_inputs(
        self,
        items: torch.Tensor,
        time_buckets: torch.Tensor | None,
        labels: torch.Tensor | None,
        age_buckets: torch.Tensor | None = None,
        rating_buckets: torch.Tensor | None = None,
    ) -> None:
        """Raise ``ValueError`` naming the offending shape or value (BERT's errors do not)."""
        if items.dim() != 2:
            raise ValueError(f"items must be 2-D [B, L], got shape {tuple(items.shape)}")
        if items.shape[1] > self.config.max_len:
            raise ValueError(f"items length {items.shape[1]} > max_len={self.config.max_len}")
        shaped = (("time_buckets", time_buckets), ("labels", labels))
        if self.rating_embedding is not None:
            shaped += (("rating_buckets", rating_buckets),)
            if rating_buckets is not None:
                top = self.config.num_rating_buckets + 1
                _check_range("rating_buckets", rating_buckets, 0, top)
        for name, other in shaped:
            if other is not None and other.shape != items.shape:
                raise ValueError(
                    f"{name} shape {tuple(other.shape)} != items shape {tuple(items.shape)}"
                )
        if self.config.use_time_gaps and time_buckets is None:
            raise ValueError("the model was built with use_time_gaps=True; pass time_buckets")
        if self.config.use_event_ages:
            self._check_age_buckets(items, age_buckets)
        _check_range("items", items, 0, self.config.vocab_size)
        if self.time_embedding is not None:
            _check_range("time_buckets", time_buckets, 0, self.config.num_time_buckets)
        if labels is not None:
            targets = labels[labels != IGNORE_INDEX]
            _check_range("labels", targets, NUM_SPECIAL_TOKENS, self.config.vocab_size)

    def _check_age_buckets(self, items: torch.Tensor, age_buckets: torch.Tensor | None) -> None:
        """Raise ``ValueError`` unless ``age_buckets`` is ``[B, L, L]`` of valid buckets."""
        if age_buckets is None:
            raise ValueError("the model was built with use_event_ages=True; pass age_buckets")
        expected = (*items.shape, items.shape[1])
        if age_buckets.shape != expected:
            raise ValueError(
                f"age_buckets shape {tuple(age_buckets.shape)} != [B, L, L] {expected}"
            )
        _check_range("age_buckets", age_buckets, 0, self.config.num_time_buckets)

    def _check_negatives(self, negatives: NegativeSample) -> None:
        """Raise ``ValueError`` unless the sample fits this vocabulary."""
        ids, log_q = negatives.ids, negatives.log_q
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"negatives.ids must be 1-D [S], S > 0, got shape {tuple(ids.shape)}")
        _check_range("negatives.ids", ids, NUM_SPECIAL_TOKENS, self.config.vocab_size)
        if log_q.dim() != 0 and log_q.shape != (self.config.vocab_size,):
            raise ValueError(
                f"negatives.log_q must be 0-d or [{self.config.vocab_size}], "
                f"got shape {tuple(log_q.shape)}"
            )

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (no pickles) to ``directory``.

        The decoder is the item embedding itself, not a copy, so the state dict holds each
        tensor once and safetensors' shared-tensor rule is never hit.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Bert4Rec:
        """Rebuild a model saved by :meth:`save`; returned in eval mode, as HF models are.

        Raises:
            RuntimeError: If the weights do not match the config (missing/unexpected keys).
        """
        directory = Path(directory)
        config = Bert4RecConfig.from_pretrained(directory)
        model = cls(config)
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()


def _check_range(name: str, values: torch.Tensor, low: int, high: int) -> None:
    """Raise ``ValueError`` unless ``values`` are integers in ``[low, high)`` (one host sync)."""
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {values.dtype}")
    if values.numel() == 0:
        return
    smallest, largest = torch.stack([values.min(), values.max()]).tolist()
    if smallest < low or largest >= high:
        raise ValueError(
            f"{name} values must be in [{low}, {high}), got min {smallest} max {largest}"
        )
