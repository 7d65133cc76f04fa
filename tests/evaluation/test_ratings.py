"""Rating errors: the model's on the rated held-out events, and the baselines' on the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_dist import schema
from recsys_dist.evaluation.ratings import BASELINES, Errors, rating_errors, tally_rating_errors
from recsys_dist.model import Bert4Rec, Bert4RecConfig


def rows(users: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out rows where each user rates consistently (their own mean, plus item bias):
    biases and SVD have something to learn that the global mean misses."""
    rng = np.random.default_rng(seed)
    user_mean = rng.uniform(1.5, 4.5, users)
    item_bias = rng.normal(0, 0.5, 20)
    items, times, ratings, targets, target_ratings = [], [], [], [], []
    for user in range(users):
        seq = rng.choice(np.arange(2, 22), 8, replace=False)
        rated = np.clip(user_mean[user] + item_bias[seq - 2], 1, 5).astype(np.float32)
        items.append(seq[:-1])
        times.append(np.arange(7, dtype=np.int64) * 60)
        ratings.append(rated[:-1])
        targets.append(seq[-1])
        target_ratings.append(rated[-1])
    target_rating = np.array(target_ratings, np.float32)
    target_rating[::10] = np.nan  # some held-out events carry no rating
    return {
        schema.USER_ID: np.array([f"u{u}" for u in range(users)], object),
        schema.ITEMS: _objects(items),
        schema.TIMESTAMPS: _objects(times),
        schema.RATINGS: _objects(ratings),
        schema.TARGET_ITEM: np.array(targets, np.int64),
        schema.TARGET_TIMESTAMP: np.full(users, 1000, np.int64),
        schema.TARGET_RATING: target_rating,
    }


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), object)
    out[:] = values
    return out


@pytest.fixture()
def model() -> Bert4Rec:
    torch.manual_seed(0)
    config = Bert4RecConfig(
        vocab_size=22,
        max_len=6,
        hidden_size=8,
        num_heads=2,
        intermediate_size=16,
        objective="causal",
        rating_head=True,
        rating_min=1.0,
        rating_max=5.0,
        rating_mean=3.0,
    )
    return Bert4Rec(config).eval()


def test_the_model_and_every_baseline_are_scored_on_the_rated_held_out_events(model):
    batch = rows()
    half = {name: column[:20] for name, column in batch.items()}
    rest = {name: column[20:] for name, column in batch.items()}
    result = rating_errors(model, [half, rest], torch.device("cpu"))
    assert result["rated_targets"] == 36  # 40 users, every tenth target unrated
    assert set(result["baselines"]) == set(BASELINES)
    for errors in (result["model"], *result["baselines"].values()):
        assert 0 < errors["mae"] <= errors["rmse"] < 4
    # An untrained head predicts the data's mean plus the user's recent-ratings prior (weight
    # 1): near each user's own mean, which beats the global mean for users who rate consistently.
    assert result["model"]["rmse"] < result["baselines"]["global_mean"]["rmse"] - 0.2
    # Users rate consistently: their biases beat the global mean.
    assert result["baselines"]["biases"]["rmse"] < result["baselines"]["global_mean"]["rmse"] - 0.2


def test_rows_without_a_rated_target_give_no_errors(model):
    batch = rows(users=5)
    batch[schema.TARGET_RATING][:] = np.nan
    result = rating_errors(model, [batch], torch.device("cpu"))
    assert result["rated_targets"] == 0
    assert "model" not in result and "baselines" not in result


def test_tallying_passes_the_rows_on_and_sums_the_same_errors_as_the_full_report(model):
    """Training's validation reads the rows once: the ranking gets them as they came, and
    the errors summed on the way equal the model's in the full report."""
    batches = [rows(users=20, seed=1), rows(users=20, seed=2)]
    errors = Errors()
    passed = list(tally_rating_errors(model, iter(batches), errors, torch.device("cpu")))
    assert all(a is b for a, b in zip(passed, batches, strict=True))
    assert errors.count == 36
    report = rating_errors(model, batches, torch.device("cpu"))
    assert errors.summary() == report["model"]
