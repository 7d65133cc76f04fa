"""The rating head: trained by MSE beside the next item, reading each event's rating."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_dist.model import Bert4Rec
from recsys_dist.schema import MASK_INDEX

from .tiny import MAX_LEN, VOCAB, batch, tiny_config

RATED = dict(rating_head=True, num_rating_buckets=5, rating_min=1.0, rating_max=5.0)


def rated_model(**overrides) -> Bert4Rec:
    torch.manual_seed(0)
    return Bert4Rec(tiny_config(objective="causal", rating_mean=3.0, **RATED, **overrides))


def ratings_batch(seed: int = 0):
    """A causal batch with rating inputs (buckets 0-5) and a rating label per labelled
    position, one of them missing (NaN)."""
    items, buckets, labels = batch(seed)
    items = items.masked_fill(items == MASK_INDEX, 5)
    gen = torch.Generator().manual_seed(seed)
    rating_buckets = torch.randint(0, 6, items.shape, generator=gen)
    rating_labels = torch.randint(1, 6, items.shape, generator=gen).float()
    rating_labels[labels == -100] = float("nan")
    rating_labels[0, -1] = float("nan")
    return items, buckets, labels, rating_buckets, rating_labels


def test_the_rating_head_learns_the_ratings_of_one_batch():
    model = rated_model()
    items, buckets, labels, rated, targets = ratings_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        output = model(items, buckets, labels, rating_buckets=rated, rating_labels=targets)
        optimizer.zero_grad()
        (output.loss + output.rating_loss).backward()
        optimizer.step()
        losses.append(output.rating_loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_unrated_targets_count_for_nothing_but_keep_every_parameter_in_the_graph():
    model = rated_model()
    items, buckets, labels, rated, targets = ratings_batch()
    none_rated = torch.full_like(targets, float("nan"))
    output = model(items, buckets, labels, rating_buckets=rated, rating_labels=none_rated)
    assert output.rating_loss.item() == 0.0
    (output.loss + output.rating_loss).backward()
    head = model.rating_head
    assert all(p.grad is not None for p in head.parameters())  # DeepSpeed needs every grad


def test_predicted_ratings_cover_every_item_within_the_scale_and_read_the_ratings():
    model = rated_model(dropout=0.0, attention_dropout=0.0).eval()
    items, buckets, _, rated, _ = ratings_batch()
    items[:, -1] = MASK_INDEX
    rated[:, -1] = 0
    with torch.no_grad():  # an untrained head's intercept sits inside the scale: push it out
        model.rating_head.mean.fill_(9.0)
    predicted = model.predict_ratings(items, buckets, rating_buckets=rated)
    assert predicted.shape == (len(items), VOCAB)
    assert predicted.max() == 5.0  # clipped to the data's scale
    with torch.no_grad():
        model.rating_head.mean.fill_(3.0)
    before = model.predict_ratings(items, buckets, rating_buckets=rated)
    changed = rated.clone()
    changed[:, -2] = (rated[:, -2] % 5) + 1  # the last event's rating
    assert not torch.allclose(before, model.predict_ratings(items, buckets, rating_buckets=changed))


def test_a_model_without_a_rating_head_says_so():
    model = Bert4Rec(tiny_config())
    items, buckets, _ = batch()
    with pytest.raises(ValueError, match="no rating head"):
        model.predict_ratings(items, buckets)


def test_rating_buckets_outside_the_scale_raise_value_error():
    model = rated_model()
    items, buckets, labels, rated, targets = ratings_batch()
    with pytest.raises(ValueError, match="rating_buckets"):
        model(items, buckets, labels, rating_buckets=rated + 6)
    with pytest.raises(ValueError, match="rating_buckets"):
        model(items, buckets, labels, rating_buckets=rated[:, : MAX_LEN - 1])


def test_a_rated_model_round_trips(tmp_path):
    model = rated_model().eval()
    model.save(tmp_path / "export")
    loaded = Bert4Rec.load(tmp_path / "export")
    items, buckets, _, rated, _ = ratings_batch()
    torch.testing.assert_close(
        model.predict_ratings(items, buckets, rating_buckets=rated),
        loaded.predict_ratings(items, buckets, rating_buckets=rated),
    )
    assert loaded.config.rating_scale() == model.config.rating_scale()


def _with_prior(model: Bert4Rec, decay: float, shrinkage: float) -> Bert4Rec:
    head = model.rating_head
    with torch.no_grad():
        head.decay_logit.fill_(math.log(decay / (1 - decay)))
        head.log_shrinkage.fill_(math.log(shrinkage))
    return model


def test_the_rating_prior_is_the_recent_decayed_shrunk_mean_of_the_residuals_seen():
    """Causal: position t sees the ratings up to itself; cloze: every other one, by distance.
    Each rating counts as its residual (rating - mean - item bias), weighted decay ** back."""
    causal = _with_prior(rated_model(), decay=0.5, shrinkage=1.0)  # bucket b is rating b
    buckets = torch.tensor([[0, 5, 0, 1, 3]])  # residuals +2, -2 and 0 at positions 1, 3, 4
    items = torch.tensor([[0, 4, 5, 6, 7]])
    expected = [0.0, 2 / 2, 1 / 1.5, -1.5 / 2.25, -0.75 / 2.625]
    torch.testing.assert_close(causal.rating_prior(buckets, items), torch.tensor([expected]))
    # The query is read at the last event, as the causal state is.
    query = causal.query_rating_prior(buckets, items)
    torch.testing.assert_close(query, torch.tensor([-1.5 / 2.25]))
    with torch.no_grad():
        causal.rating_head.item_bias.weight[4] = 1.0  # item 4's 5 is 1 above its usual 4
    torch.testing.assert_close(causal.rating_prior(buckets, items)[0, 1], torch.tensor(1 / 2))
    cloze = Bert4Rec(tiny_config(objective="cloze", rating_mean=3.0, **RATED))
    cloze = _with_prior(cloze, decay=0.5, shrinkage=1.0)
    masked = torch.tensor([[0, 5, 0, 1, 0]])  # the query's MASK last, unrated
    torch.testing.assert_close(
        cloze.query_rating_prior(masked, items), torch.tensor([(0.25 - 1) / (1 + 0.625)])
    )
    assert cloze.rating_prior(None, items).tolist() == [[0.0] * 5]
