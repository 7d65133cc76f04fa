"""Tiny-config tests of the BERT4Rec model, its config and its time-gap input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import RobertaPreLayerNormModel

from recsys_dist.config import OBJECTIVES, ModelConfig
from recsys_dist.data.time_gaps import event_age_buckets
from recsys_dist.model import WEIGHTS_FILE, Bert4Rec, Bert4RecConfig
from recsys_dist.schema import MASK_INDEX, PAD_INDEX

from .tiny import BUCKETS, MAX_LEN, VOCAB, batch, tiny_config


@pytest.fixture()
def model() -> Bert4Rec:
    torch.manual_seed(0)
    return Bert4Rec(tiny_config())


# --- config ------------------------------------------------------------------------------------


def test_every_model_config_field_reaches_the_model():
    """Habit 2: a non-default value of each ModelConfig field shows up in the built model."""
    cfg = ModelConfig(
        hidden_size=24,
        num_layers=3,
        num_heads=3,
        intermediate_size=40,
        dropout=0.15,
        attention_dropout=0.05,
        use_time_gaps=False,
        num_time_buckets=7,
        use_event_ages=True,
        objective="causal" if ModelConfig().objective == "cloze" else "cloze",
        pre_norm=not ModelConfig().pre_norm,
        head_transform=not ModelConfig().head_transform,
        rating_head=False,
        num_rating_buckets=4,
        item_text=True,
        text_id_dropout=0.3,
    )
    defaults = ModelConfig()
    assert all(getattr(cfg, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(cfg))
    config = Bert4RecConfig.from_model_config(
        cfg, vocab_size=41, max_len=9, ratings=RATINGS, item_text_dim=12
    )
    model = Bert4Rec(config)
    bert = model.bert.config
    assert model.item_embedding.weight.shape == (41, 24)
    # Pre-norm (RoBERTa-PreLayerNorm) keeps position row 0 for padding: max_len + 1 rows.
    assert isinstance(model.bert, RobertaPreLayerNormModel) == cfg.pre_norm
    assert model.bert.embeddings.position_embeddings.weight.shape == (9 + cfg.pre_norm, 24)
    assert len(model.bert.encoder.layer) == 3
    assert bert.num_attention_heads == 3
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 40
    assert model.bert.embeddings.dropout.p == 0.15
    assert bert.attention_probs_dropout_prob == 0.05
    assert model.time_embedding is None
    assert model.age_bias.weight.shape == (7, 3)  # a bias per age bucket and head
    assert bert.is_decoder == (cfg.objective == "causal")
    assert (model.head_dense is not None) == cfg.head_transform
    assert Bert4Rec(Bert4RecConfig.from_model_config(defaults, 41, 9)).time_embedding is not None
    assert config.num_time_buckets == 7
    with_gaps = dataclasses.replace(cfg, use_time_gaps=True)
    built = Bert4Rec(Bert4RecConfig.from_model_config(with_gaps, 41, 9, item_text_dim=12))
    assert built.time_embedding.num_embeddings == 7
    assert model.rating_head is None and model.rating_embedding is None  # switched off
    assert model.item_text.shape == (41, 12) and model.text_projection.weight.shape == (24, 12)
    assert model.config.text_id_dropout == 0.3
    assert Bert4Rec(Bert4RecConfig.from_model_config(defaults, 41, 9)).item_text is None
    rated = Bert4Rec(
        Bert4RecConfig.from_model_config(
            dataclasses.replace(cfg, rating_head=True), 41, 9, ratings=RATINGS, item_text_dim=12
        )
    )
    assert rated.rating_embedding.num_embeddings == 5  # 4 buckets and "no rating"
    assert (rated.config.rating_min, rated.config.rating_max) == (1.0, 5.0)
    assert float(rated.rating_head.mean) == 3.5
    unrated = Bert4RecConfig.from_model_config(defaults, 41, 9, ratings=None)
    assert not unrated.rating_head  # data without ratings builds no head


RATINGS = {"events": 10, "min": 1.0, "max": 5.0, "mean": 3.5}


def test_model_config_is_the_one_home_of_the_model_defaults():
    """Habit 14: every ModelConfig field is a Bert4RecConfig field with the same default (they
    drifted once: attention_dropout 0.1 vs 0.2)."""
    declared = {f.name: f.default for f in dataclasses.fields(Bert4RecConfig)}
    for field in dataclasses.fields(ModelConfig):
        assert field.name in declared, f"Bert4RecConfig lacks ModelConfig.{field.name}"
        if field.name not in EXPORT_FORMAT_DEFAULTS:
            assert declared[field.name] == field.default, field.name
    assert {name: declared[name] for name in EXPORT_FORMAT_DEFAULTS} == EXPORT_FORMAT_DEFAULTS


# Fields whose default in an export is the format's history, not the run default: an export
# written before the field existed was trained that way.
EXPORT_FORMAT_DEFAULTS = {"objective": "cloze", "rating_head": False, "head_transform": True}


def test_an_export_from_before_the_objective_field_loads_as_cloze(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["objective"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert Bert4RecConfig.from_pretrained(tmp_path).objective == "cloze"


def test_an_export_from_before_the_head_transform_field_loads_with_it(tmp_path):
    model = Bert4Rec(tiny_config())
    model.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["head_transform"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert Bert4Rec.load(tmp_path).head_dense is not None  # its weights load, strict


def test_without_the_head_transform_a_score_is_the_state_dotted_with_the_item(tmp_path):
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(head_transform=False)).eval()
    assert not any(name.startswith("head_") for name, _ in model.named_parameters())
    items, buckets, _ = batch()
    hidden = model.encode(items, buckets)  # [B, L, H]
    expected = hidden @ model.item_embedding.weight.T + model.output_bias  # [B, L, V]
    logits = model(items, buckets).logits
    torch.testing.assert_close(logits[..., 2:], expected[..., 2:])
    model.save(tmp_path)
    assert torch.equal(Bert4Rec.load(tmp_path)(items, buckets).logits, logits)


def test_every_non_default_model_config_value_reaches_the_saved_model_config(tmp_path):
    """Habit 2 and 3, field by field: a value of every ModelConfig field other than its default
    is in the model's config, and in the config.json an export rebuilds the model from."""
    other = {
        bool: lambda v: not v,
        int: lambda v: v * 2,
        float: lambda v: round(v / 2, 4) if v else 0.25,
        str: lambda v: next(o for o in OBJECTIVES if o != v),  # the one str field: objective
    }
    defaults = ModelConfig()
    changed = {
        f.name: other[type(getattr(defaults, f.name))](getattr(defaults, f.name))
        for f in dataclasses.fields(ModelConfig)
    }
    cfg = ModelConfig(**changed)
    model_config = Bert4RecConfig.from_model_config(
        cfg, vocab_size=VOCAB, max_len=MAX_LEN, item_text_dim=4
    )
    model = Bert4Rec(model_config)
    model.save(tmp_path)
    rebuilt = Bert4Rec.load(tmp_path).config
    for name, value in changed.items():
        assert value != getattr(defaults, name), name
        assert getattr(model.config, name) == value == getattr(rebuilt, name), name


def test_a_model_config_field_the_model_does_not_declare_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Wider(ModelConfig):
        new_knob: int = 3

    with pytest.raises(TypeError, match="new_knob"):
        Bert4RecConfig.from_model_config(Wider(), vocab_size=VOCAB, max_len=MAX_LEN)


def test_config_round_trips_and_validates(tmp_path):
    config = tiny_config(use_time_gaps=False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "recsys_bert4rec" and saved["pad_token_id"] == PAD_INDEX
    assert Bert4RecConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="not divisible"):
        tiny_config(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="vocab_size=2"):
        tiny_config(vocab_size=2)
    with pytest.raises(ValueError, match="objective"):
        tiny_config(objective="autoregressive")


# --- forward -----------------------------------------------------------------------------------


def test_forward_shapes_and_finite_loss(model):
    inputs, buckets, labels = batch()
    out = model(inputs, buckets, labels)
    assert out.logits.shape == (5, VOCAB)  # 4 last positions + 1 extra label
    assert torch.isfinite(out.loss)
    assert model(inputs, buckets).logits.shape == (4, MAX_LEN, VOCAB)
    assert model(inputs, buckets).loss is None
    shorter = model(inputs[:, 3:], buckets[:, 3:], labels[:, 3:])  # L < max_len is fine
    assert torch.isfinite(shorter.loss)


def test_overfits_one_batch(model):
    inputs, buckets, labels = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model(inputs, buckets, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_head_is_tied_to_item_embedding(model):
    inputs, buckets, labels = batch()
    model(inputs, buckets, labels).loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert not any("decoder" in name for name in names)
    assert sum(p.shape[0] == VOCAB and p.dim() == 2 for p in model.parameters()) == 1
    # The output head's gradient lands on the embedding rows of every real item, even those
    # that never appear in the input (they only get gradient through the softmax).
    unseen = sorted(set(range(2, VOCAB)) - set(inputs.flatten().tolist()))
    assert unseen and model.item_embedding.weight.grad[unseen].abs().sum() > 0
    with torch.no_grad():
        model.item_embedding.weight[5] += 1.0
    model.eval()
    before = model.score_next(inputs, buckets)
    with torch.no_grad():
        model.item_embedding.weight[7].zero_()
    after = model.score_next(inputs, buckets)
    assert torch.allclose(after[:, 7], model.output_bias[7].expand(4))
    assert not torch.equal(before[:, 7], after[:, 7])


def test_score_next_shape_and_special_columns(model):
    inputs, buckets, _ = batch()
    scores = model.eval().score_next(inputs, buckets)
    assert scores.shape == (4, VOCAB)
    assert (
        torch.isneginf(scores[:, PAD_INDEX]).all() and torch.isneginf(scores[:, MASK_INDEX]).all()
    )
    assert torch.isfinite(scores[:, 2:]).all()
    full = model(inputs, buckets).logits[:, -1]
    torch.testing.assert_close(scores, full)


def test_a_chunked_loss_equals_the_whole_one_and_keeps_no_logits(model):
    """``max_logits`` bounds memory, never the result: same loss, same gradients."""
    inputs, buckets, labels = batch()
    model.eval()  # no dropout: two forward passes must match
    whole = model(inputs, buckets, labels)
    whole.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    chunked = model(inputs, buckets, labels, max_logits=2 * VOCAB)  # 5 rows in chunks of 2
    chunked.loss.backward()
    assert chunked.logits is None and whole.logits is not None
    torch.testing.assert_close(chunked.loss, whole.loss)
    for name, param in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], msg=name)


# --- the causal (next-item) objective ----------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["post-norm", "pre-norm"])
def causal(request) -> Bert4Rec:
    torch.manual_seed(0)
    config = tiny_config(
        objective="causal", dropout=0.0, attention_dropout=0.0, pre_norm=request.param
    )
    return Bert4Rec(config)


def test_a_causal_model_never_sees_the_future(causal):
    items, buckets, _ = batch()
    items = items.masked_fill(items == MASK_INDEX, 5)
    changed = items.clone()
    changed[:, 5] = 9
    before, after = causal(items, buckets).logits, causal(changed, buckets).logits
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_a_pre_norm_model_round_trips(tmp_path):
    """Its causality is the ``causal`` fixture's tests' (both encoders)."""
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(objective="causal", pre_norm=True)).eval()
    items, buckets, _ = batch()
    model.save(tmp_path)
    loaded = Bert4Rec.load(tmp_path)
    assert isinstance(loaded.bert, RobertaPreLayerNormModel)
    assert torch.equal(model.score_next(items, buckets), loaded.score_next(items, buckets))


def test_a_pre_norm_model_trains_every_position_it_reads():
    """RoBERTa's position row 0 is padding (zero, frozen): a full-length input's oldest event
    must read row 1, not row 0, so every position has a trained embedding."""
    model = Bert4Rec(tiny_config(objective="causal", pre_norm=True))
    items, buckets, labels = batch()
    model(items, buckets, labels).loss.backward()
    grad = model.bert.embeddings.position_embeddings.weight.grad  # [MAX_LEN + 1, H]
    assert grad[0].abs().sum() == 0
    assert bool((grad[1:].abs().sum(dim=1) > 0).all())


def test_a_causal_model_scores_the_next_item_at_the_last_event(causal):
    """``score_next`` takes the cloze inputs (MASK appended with the query's bucket) and reads
    the last event given that bucket: what training's shift labels with the next item."""
    items, buckets, _ = batch()
    items[:, -1] = MASK_INDEX
    scores = causal.eval().score_next(items, buckets)
    shifted = causal(items[:, :-1], buckets[:, 1:]).logits[:, -1]
    torch.testing.assert_close(scores, shifted)
    query_bucket = buckets.clone()
    query_bucket[:, -1] = (buckets[:, -1] + 1) % BUCKETS
    assert not torch.allclose(scores, causal.score_next(items, query_bucket))


def test_bf16_autocast_runs(model):
    inputs, buckets, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs, buckets, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(model.item_embedding.weight.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(items=torch.zeros(4, dtype=torch.long)), r"2-D.*\(4,\)"),
        (dict(items=torch.full((2, MAX_LEN + 1), 3)), "length 9 > max_len=8"),
        (
            dict(items=torch.full((2, 4), 3), time_buckets=torch.zeros(2, 5, dtype=torch.long)),
            r"time_buckets shape \(2, 5\)",
        ),
        (
            dict(items=torch.full((2, 4), 3), labels=torch.zeros(3, 4, dtype=torch.long)),
            r"labels shape \(3, 4\)",
        ),
        (dict(items=torch.full((2, 4), VOCAB)), "max 30"),
        (dict(items=torch.full((2, 4), 3)), "use_time_gaps=True"),
        (dict(items=torch.full((2, 4), 3), time_buckets=torch.full((2, 4), BUCKETS)), "max 6"),
        (dict(items=torch.full((2, 4), 3), labels=torch.full((2, 4), MASK_INDEX)), "labels"),
    ],
)
def test_bad_inputs_raise_value_error(model, kwargs, message):
    if "time_buckets" not in kwargs and "use_time_gaps" not in message:
        kwargs["time_buckets"] = torch.zeros_like(kwargs["items"])
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_save_load_round_trip(model, tmp_path):
    inputs, buckets, labels = batch()
    model(inputs, buckets, labels).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # move off the init
    model.save(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", WEIGHTS_FILE]
    loaded = Bert4Rec.load(tmp_path / "export")
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert (
        original.keys() == restored.keys() == load_file(tmp_path / "export" / WEIGHTS_FILE).keys()
    )
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.config.to_dict() == model.config.to_dict()
    model.eval()
    assert torch.equal(model.score_next(inputs, buckets), loaded.score_next(inputs, buckets))
    assert torch.equal(model(inputs, buckets, labels).loss, loaded(inputs, buckets, labels).loss)


# --- the event-age attention bias ----------------------------------------------------------------


def ages_of(items: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``[B, L, L]`` age buckets from random increasing times (real earlier keys only); gaps
    of up to 8 seconds, so the ages spread over the tiny config's buckets."""
    gen = torch.Generator().manual_seed(seed)
    times = torch.randint(0, 9, items.shape, generator=gen).cumsum(1)
    return torch.from_numpy(event_age_buckets(times.numpy(), items.numpy(), BUCKETS))


@pytest.fixture(params=OBJECTIVES)
def aged(request) -> tuple[Bert4Rec, Bert4Rec]:
    """A model with the age bias and the same model without it (same other weights)."""
    torch.manual_seed(0)
    config = tiny_config(objective=request.param, dropout=0.0, attention_dropout=0.0)
    plain = Bert4Rec(config)
    with_ages = Bert4Rec(tiny_config(**{**config.to_dict(), "use_event_ages": True}))
    missing = with_ages.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["age_bias.weight"]
    return plain.eval(), with_ages.eval()


def test_a_fresh_age_bias_is_plain_attention(aged):
    """Zero-initialised, so switching it on starts from the model without it; the 4-D mask
    keeps BERT's own padding (and causal) masking at every real position."""
    plain, with_ages = aged
    items, buckets, _ = batch()
    real = items != PAD_INDEX
    torch.testing.assert_close(
        with_ages(items, buckets, age_buckets=ages_of(items)).logits[real],
        plain(items, buckets).logits[real],
    )


def test_the_age_bias_changes_what_a_position_attends_to(aged):
    _, model = aged
    items, buckets, _ = batch()
    ages = ages_of(items)
    before = model.score_next(items, buckets, ages)
    with torch.no_grad():
        model.age_bias.weight.normal_()
    assert not torch.allclose(before, model.score_next(items, buckets, ages))
    older = ages.clone()
    older[:, -1] = torch.where(older[:, -1] > 0, BUCKETS - 1, 0)  # every event aged to the cap
    assert not torch.allclose(
        model.score_next(items, buckets, ages), model.score_next(items, buckets, older)
    )


def test_a_causal_model_with_ages_never_sees_the_future():
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(objective="causal", use_event_ages=True, dropout=0.0))
    with torch.no_grad():
        model.age_bias.weight.normal_()
    items, buckets, _ = batch()
    items = items.masked_fill(items == MASK_INDEX, 5)
    ages = ages_of(items)
    changed, changed_ages = items.clone(), ages.clone()
    changed[:, 5] = 9
    changed_ages[:, 5:, :] = (ages[:, 5:, :] + 1) % BUCKETS  # rows of positions 5..: their ages
    before = model.eval()(items, buckets, age_buckets=ages).logits
    after = model(changed, buckets, age_buckets=changed_ages).logits
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_a_causal_model_scores_with_the_ages_at_the_query_time():
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(objective="causal", use_event_ages=True)).eval()
    with torch.no_grad():
        model.age_bias.weight.normal_()
    items, buckets, _ = batch()
    items[:, -1] = MASK_INDEX
    ages = ages_of(items)
    scores = model.score_next(items, buckets, ages)
    shifted = model(items[:, :-1], buckets[:, 1:], age_buckets=ages[:, 1:, :-1]).logits[:, -1]
    torch.testing.assert_close(scores, shifted)


def test_an_aged_model_trains_under_bf16_autocast_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(use_event_ages=True))
    items, buckets, labels = batch()
    ages = ages_of(items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(items, buckets, labels, age_buckets=ages)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.age_bias.weight.grad.abs().sum() > 0
    model.save(tmp_path / "export")
    loaded = Bert4Rec.load(tmp_path / "export")
    assert loaded.config.use_event_ages
    model.eval()
    assert torch.equal(
        model.score_next(items, buckets, ages), loaded.score_next(items, buckets, ages)
    )


@pytest.mark.parametrize(
    ("ages", "message"),
    [
        (None, "use_event_ages=True; pass age_buckets"),
        (torch.zeros(4, MAX_LEN, MAX_LEN - 1, dtype=torch.long), r"age_buckets shape \(4, 8, 7\)"),
        (torch.full((4, MAX_LEN, MAX_LEN), BUCKETS), "age_buckets values"),
    ],
)
def test_bad_age_buckets_raise_value_error(ages, message):
    model = Bert4Rec(tiny_config(use_event_ages=True))
    items, buckets, _ = batch()
    with pytest.raises(ValueError, match=message):
        model(items, buckets, age_buckets=ages)
