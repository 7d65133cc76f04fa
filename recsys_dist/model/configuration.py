"""The model's own config, saved as ``config.json`` beside the weights.

An export must rebuild the model without the training YAML, so every shape-defining value
lives here (an HF ``PreTrainedConfig``, like ``BertConfig``) and is written by
``save_pretrained``. The defaults of the fields the run config sets are not repeated here:
they are :class:`recsys_dist.config.ModelConfig`'s, the one place a hyper-parameter's default
lives, and ``from_model_config`` copies every ``ModelConfig`` field by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from recsys_dist.config import OBJECTIVES, ModelConfig
from recsys_dist.data.batching import RatingScale
from recsys_dist.schema import MASK_INDEX, NUM_SPECIAL_TOKENS, PAD_INDEX

_RUN_DEFAULTS = ModelConfig()  # the defaults of every field the run's ``model`` section sets


@strict
class Bert4RecConfig(PretrainedConfig):
    r"""Shape of a BERT4Rec model; every field is needed to rebuild it from an export.

    Args:
        vocab_size: Rows of the item embedding, *including* the special tokens PAD (0) and
            MASK (1); real items are ``2 .. vocab_size - 1``. Read from the vocabulary artefact.
        max_len: Longest input sequence (position embeddings). Inputs are left-padded, so the
            most recent event always sits at position ``max_len - 1``.
        hidden_size: Width of item embeddings and of the transformer.
        num_layers: Number of bidirectional transformer blocks.
        num_heads: Attention heads per block; must divide ``hidden_size``.
        intermediate_size: Width of each block's feed-forward layer.
        dropout: Dropout on embeddings and on every residual branch.
        attention_dropout: Dropout on attention probabilities.
        use_time_gaps: Add an embedding of the log2-bucketed gap to the previous event, so
            the model can tell a binge from a return after months.
        num_time_buckets: Size of that bucket vocabulary (bucket 0 = no previous event).
        use_event_ages: Add to every attention logit a learned per-head bias of the key
            event's age, on the same log2 buckets, at the time the query position predicts
            for; inputs then include ``[B, L, L]`` age buckets. Its default here is False:
            exports written before the field had no such bias.
        objective: ``"cloze"`` (bidirectional, masked items) or ``"causal"`` (causal mask,
            next item at every position). It changes the attention mask and where
            ``score_next`` reads, so it is part of the export. Its default here is
            ``"cloze"``, not the run default: exports written before the field were cloze.
        pre_norm: Put each block's LayerNorm before its branches, and one after the last
            block (HF's RoBERTa-PreLayerNorm encoder), instead of BERT's after each residual
            sum. It changes the weights' names, so it is part of the export; False here:
            exports written before the field were post-norm.
        head_transform: Pass each state through BERT's MLM transform (dense -> GELU ->
            LayerNorm) before it meets the tied item table; without it the state itself is
            dotted with the table (SASRec's head). True here: exports written before the
            field had the transform.
        rating_head: Read each event's rating (bucketed) as an input and predict ratings with
            a head on the encoder: ``mean + user(h) + item_bias[j] + <proj(h), item_j>``.
            False here: exports written before the field had none, and data without ratings
            builds none (``from_model_config``).
        num_rating_buckets: Rating input buckets over ``[rating_min, rating_max]``; bucket 0
            is "no rating".
        rating_min: Lowest rating of the data's scale (predictions are clipped to the scale).
        rating_max: Highest rating of the data's scale.
        rating_mean: Mean rating of the data, the head's starting intercept.
        item_text: Add to every item's ID embedding a learned projection (``item_text_dim``
            -> ``hidden_size``) of its text embedding, a buffer saved with the weights, so
            an item seen in no training event still gets a vector its text places. False
            here: exports written before the field had none.
        item_text_dim: Width of the text embeddings (the sentence model's, 384 for
            all-MiniLM-L6-v2); 0 without ``item_text``. Set by ``from_model_config`` from
            the matrix the trainer computed (:mod:`recsys_dist.data.item_text`).
        text_id_dropout: With ``item_text``, the share of items whose ID embedding each
            training step drops (input and output alike), so the text projection learns
            to place an item alone, as it must for a cold one.
        initializer_range: Std of the normal initialisation (BERT's 0.02).
        layer_norm_eps: Epsilon of every LayerNorm (BERT's 1e-12).
        pad_token_id: Always ``schema.PAD_INDEX``; stored so an export is self-describing.
        mask_token_id: Always ``schema.MASK_INDEX``; stored for the same reason.
    """

    model_type = "recsys_bert4rec"

    vocab_size: int = 1000
    max_len: int = 50
    hidden_size: int = _RUN_DEFAULTS.hidden_size
    num_layers: int = _RUN_DEFAULTS.num_layers
    num_heads: int = _RUN_DEFAULTS.num_heads
    intermediate_size: int = _RUN_DEFAULTS.intermediate_size
    dropout: float = _RUN_DEFAULTS.dropout
    attention_dropout: float = _RUN_DEFAULTS.attention_dropout
    use_time_gaps: bool = _RUN_DEFAULTS.use_time_gaps
    num_time_buckets: int = _RUN_DEFAULTS.num_time_buckets
    use_event_ages: bool = False
    objective: str = "cloze"
    pre_norm: bool = False
    head_transform: bool = True
    rating_head: bool = False
    num_rating_buckets: int = _RUN_DEFAULTS.num_rating_buckets
    rating_min: float = 0.0
    rating_max: float = 0.0
    rating_mean: float = 0.0
    item_text: bool = False
    item_text_dim: int = 0
    text_id_dropout: float = _RUN_DEFAULTS.text_id_dropout
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = PAD_INDEX
    mask_token_id: int = MASK_INDEX

    def __post_init__(self, **kwargs: Any) -> None:
        self._check()
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        """Fail at construction, naming the value, rather than deep inside ``BertModel``."""
        if self.vocab_size <= NUM_SPECIAL_TOKENS:
            raise ValueError(
                f"vocab_size={self.vocab_size} must exceed the {NUM_SPECIAL_TOKENS} special tokens"
            )
        for name in ("max_len", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_time_buckets < 2:
            raise ValueError(f"num_time_buckets must be >= 2, got {self.num_time_buckets}")
        if self.rating_head and not self.rating_min < self.rating_max:
            raise ValueError(
                f"a rating head needs rating_min < rating_max, got "
                f"[{self.rating_min}, {self.rating_max}]"
            )
        if self.item_text and self.item_text_dim <= 0:
            raise ValueError(f"item_text needs item_text_dim > 0, got {self.item_text_dim}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ValueError(
                f"dropout={self.dropout} and attention_dropout={self.attention_dropout} "
                "must be in [0, 1)"
            )
        if (self.pad_token_id, self.mask_token_id) != (PAD_INDEX, MASK_INDEX):
            raise ValueError(
                f"pad/mask ids ({self.pad_token_id}, {self.mask_token_id}) differ from the "
                f"schema's ({PAD_INDEX}, {MASK_INDEX}); this export used another vocabulary layout"
            )

    def rating_scale(self) -> RatingScale | None:
        """How ratings are bucketed into this model's inputs (``None``: no rating head)."""
        if not self.rating_head:
            return None
        return RatingScale(self.rating_min, self.rating_max, self.num_rating_buckets)

    @classmethod
    def from_model_config(
        cls,
        cfg: ModelConfig,
        vocab_size: int,
        max_len: int,
        ratings: dict[str, float] | None = None,
        item_text_dim: int = 0,
    ) -> Bert4RecConfig:
        """Translate the run's ``model`` section; the only mapping from run config to model.

        Every ``ModelConfig`` field is copied under its own name, so a field added there
        reaches the model config, or fails here until it is declared on this class (HF
        configs would otherwise keep an unknown argument as a loose attribute).

        Args:
            cfg: The ``model`` section of the run config.
            vocab_size: ``len(vocabulary) + NUM_SPECIAL_TOKENS`` (from the vocab artefact).
            max_len: ``data.max_len``.
            ratings: The data's rating scale (``{"min", "max", "mean", ...}``, from the
                prepared manifest), or ``None``: no event has a rating, so no rating head.
                A one-value scale (every rating equal) has nothing to learn either.
            item_text_dim: Width of the item text matrix the trainer computed; used (and
                required) with ``cfg.item_text``.
        """
        section = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(cfg)}
        undeclared = set(section) - {field.name for field in dataclasses.fields(cls)}
        if undeclared:
            raise TypeError(f"ModelConfig fields {sorted(undeclared)} are not {cls.__name__}'s")
        rated = bool(cfg.rating_head and ratings and ratings["min"] < ratings["max"])
        scale = {"rating_min": ratings["min"], "rating_max": ratings["max"]} if rated else {}
        section["rating_head"] = rated
        return cls(
            vocab_size=vocab_size,
            max_len=max_len,
            rating_mean=ratings["mean"] if rated else 0.0,
            item_text_dim=item_text_dim if cfg.item_text else 0,
            **scale,
            **section,
        )
