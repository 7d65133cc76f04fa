"""The sampled softmax with log-Q correction, its sampler, its config and its training hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_dist.config import ConfigError, ModelConfig, TrainConfig, load_config
from recsys_dist.model import Bert4Rec, NegativeSample, sample_negatives
from recsys_dist.model.losses import sampled_softmax_losses, truncated_sum
from recsys_dist.schema import NUM_SPECIAL_TOKENS, PAD_INDEX

from .tiny import BUCKETS, MAX_LEN, VOCAB, batch, tiny_config

REAL_ITEMS = torch.arange(NUM_SPECIAL_TOKENS, VOCAB)


@pytest.fixture()
def model() -> Bert4Rec:
    torch.manual_seed(0)
    return Bert4Rec(tiny_config(dropout=ModelConfig().dropout))  # the run's default dropout


def uniform(ids: torch.Tensor) -> NegativeSample:
    return NegativeSample(ids, torch.tensor(-math.log(VOCAB - NUM_SPECIAL_TOKENS)))


def gradients(model: Bert4Rec) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


# --- the loss ------------------------------------------------------------------------------


def test_sampled_loss_is_finite_and_overfits_a_batch(model):
    inputs, buckets, labels = batch()
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        negatives = sample_negatives(rng, VOCAB, 8)
        out = model(inputs, buckets, labels, negatives=negatives)
        assert out.logits is None and torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("table", [False, True], ids=["scalar-log-q", "table-log-q"])
def test_every_item_as_a_negative_under_uniform_q_is_the_full_softmax(model, table):
    """The target is masked among the negatives (an accidental hit) and the constant log Q
    cancels: the same loss and gradients as the full softmax, whole or in chunks."""
    inputs, buckets, labels = batch()
    model.eval()  # no dropout: the passes must match
    negatives = uniform(REAL_ITEMS)
    if table:
        log_q = torch.full((VOCAB,), -math.log(VOCAB - NUM_SPECIAL_TOKENS))
        negatives = NegativeSample(REAL_ITEMS, log_q.index_fill(0, torch.arange(2), -math.inf))
    full = model(inputs, buckets, labels)
    full.loss.backward()
    expected = gradients(model)
    for max_logits in (0, 2 * VOCAB):  # whole; 5 rows in chunks of 2
        sampled = model(inputs, buckets, labels, max_logits=max_logits, negatives=negatives)
        sampled.loss.backward()
        torch.testing.assert_close(sampled.loss, full.loss)
        got = gradients(model)
        assert got.keys() == expected.keys()
        for name, grad in got.items():
            torch.testing.assert_close(grad, expected[name], msg=name)


def test_sampled_loss_runs_under_bf16_autocast(model):
    inputs, buckets, labels = batch()
    negatives = sample_negatives(np.random.default_rng(0), VOCAB, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs, buckets, labels, negatives=negatives)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert torch.isfinite(model.item_embedding.weight.grad).all()


def reference_loss(head, targets, weight, bias, ids, log_q) -> torch.Tensor:
    """Row by row, as the formula reads: target first, hits dropped, all minus log Q."""
    total = torch.tensor(0.0)
    for h, t in zip(head, targets.tolist()):
        kept = [i for i in ids.tolist() if i != t]
        candidates = torch.tensor([t, *kept])
        logits = weight[candidates] @ h + bias[candidates] - log_q[candidates]
        total = total - F.log_softmax(logits, dim=0)[0]
    return total


def test_accidental_hits_are_masked_and_every_logit_is_log_q_corrected():
    gen = torch.Generator().manual_seed(1)
    head, weight, bias = (torch.randn(*s, generator=gen) for s in ((3, 4), (VOCAB, 4), (VOCAB,)))
    targets = torch.tensor([3, 4, 9])
    ids = torch.tensor([3, 4, 5, 5, 4])  # drawn with replacement: repeats are separate draws
    log_q = torch.log(torch.rand(VOCAB, generator=gen) + 0.1)
    got = sampled_softmax_losses(head, targets, weight, bias, NegativeSample(ids, log_q)).sum()
    torch.testing.assert_close(got, reference_loss(head, targets, weight, bias, ids, log_q))
    # A negative equal to every row's target changes nothing: it is masked, never scored.
    same = torch.tensor([3, 3])
    alone = sampled_softmax_losses(
        head[:1], targets[:1], weight, bias, NegativeSample(same, log_q)
    ).sum()
    assert alone.item() == pytest.approx(0.0, abs=1e-6)


def test_the_loss_needs_negatives_that_fit_the_vocabulary(model):
    inputs, buckets, labels = batch()
    with pytest.raises(ValueError, match=r"negatives.ids values must be in \[2, 30\)"):
        model(inputs, buckets, labels, negatives=uniform(torch.tensor([PAD_INDEX, 5])))
    with pytest.raises(ValueError, match="1-D"):
        model(inputs, buckets, labels, negatives=uniform(torch.tensor([[5]])))
    with pytest.raises(ValueError, match=r"log_q must be 0-d or \[30\]"):
        model(inputs, buckets, labels, negatives=NegativeSample(REAL_ITEMS, torch.zeros(7)))


# --- the sampler ---------------------------------------------------------------------------


def test_uniform_negatives_are_seeded_real_items():
    first = sample_negatives(np.random.default_rng(3), VOCAB, 500)
    again = sample_negatives(np.random.default_rng(3), VOCAB, 500)
    assert torch.equal(first.ids, again.ids) and first.ids.dtype == torch.int64
    assert first.ids.min() >= NUM_SPECIAL_TOKENS and first.ids.max() < VOCAB
    assert set(first.ids.tolist()) == set(REAL_ITEMS.tolist())  # 500 draws of 28 items
    assert first.log_q.dim() == 0
    assert first.log_q.item() == pytest.approx(-math.log(VOCAB - NUM_SPECIAL_TOKENS))


def test_popularity_negatives_follow_counts_to_the_power_alpha():
    popularity = np.array([0, 0, 100, 25, 0, 1])  # item 4 never seen: drawn as if seen once
    sample = sample_negatives(np.random.default_rng(0), 6, 40_000, popularity, alpha=0.5)
    weights = np.array([10.0, 5.0, 1.0, 1.0])  # sqrt of max(count, 1)
    q = weights / weights.sum()
    np.testing.assert_allclose(sample.log_q[2:].exp().numpy(), q, rtol=1e-6)
    assert torch.isneginf(sample.log_q[:2]).all()
    frequencies = np.bincount(sample.ids.numpy(), minlength=6)[2:] / 40_000
    np.testing.assert_allclose(frequencies, q, atol=0.01)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        sample_negatives(np.random.default_rng(0), 7, 5, popularity)
    with pytest.raises(ValueError, match="count > 0"):
        sample_negatives(np.random.default_rng(0), 6, 0)


# --- config and the training step -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [("train.loss=bogus", "train.loss='bogus'"), ("train.negatives=0", "train.negatives")],
)
def test_bad_loss_settings_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_loss_defaults_to_the_exact_full_softmax():
    assert TrainConfig().loss == "full" and TrainConfig().negatives == 1024
    loaded = load_config(None, ["train.loss=sampled", "train.negatives=64"]).train
    assert (loaded.loss, loaded.negatives) == ("sampled", 64)


class RecordingEngine:
    """Stands in for the DeepSpeed engine: calls the module, records what it was given."""

    def __init__(self, module: Bert4Rec) -> None:
        self.module = module
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.module.zero_grad()


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_train_loss_and_negatives_reach_the_training_step(model, loss):
    """Habit 2: ``train.loss`` and ``train.negatives`` change what the step computes."""
    from recsys_dist.train.batches import placeholder_batch
    from recsys_dist.train.loop import _train_step

    overrides = [f"data.max_len={MAX_LEN}", f"model.num_time_buckets={BUCKETS}"]
    config = load_config(None, [*overrides, f"train.loss={loss}", "train.negatives=7"])
    engine = RecordingEngine(model)
    value = _train_step(engine, placeholder_batch(), config, np.random.default_rng(0), "cpu", 1.0)
    assert math.isfinite(value)
    negatives = engine.calls[0]["negatives"]
    if loss == "full":
        assert negatives is None
    else:
        assert negatives.ids.shape == (7,) and negatives.log_q.dim() == 0


def test_the_truncated_loss_leaves_out_the_hardest_share():
    losses = torch.tensor([0.5, 4.0, 1.0, 9.0, 2.0])
    assert truncated_sum(losses, 0.0) == losses.sum()
    assert truncated_sum(losses, 0.4) == 0.5 + 1.0 + 2.0  # 9 and 4 left out
    assert truncated_sum(losses, 0.1) == losses.sum()  # less than one row: nothing dropped
