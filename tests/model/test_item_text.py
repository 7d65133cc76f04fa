"""Cold start from text in the model: the fused item table, cold items kept out of the softmax,
and the text buffer through save/load, int8 and warm start (a tiny model, a made-up matrix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_dist.model import Bert4Rec, Bert4RecConfig
from recsys_dist.model.quantize import load_model, quantize, quantized_weights
from recsys_dist.model.warm_start import warm_start

from .tiny import BUCKETS, MAX_LEN, VOCAB, tiny_config

DIM = 8
COLD = (20, 21, 22)  # never in a training batch below


def text_matrix(vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """Unit rows as the sentence model's; PAD and MASK zeros; 20 and 21 share item 5's text."""
    text = F.normalize(torch.randn(vocab, DIM, generator=torch.Generator().manual_seed(seed)))
    text[:2] = 0
    text[20] = text[21] = text[5]
    return text


def text_model(**overrides) -> Bert4Rec:
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config(item_text=True, item_text_dim=DIM, **overrides))
    model.set_item_text(text_matrix(model.config.vocab_size))
    return model


def warm_batch(seed: int = 0, size: int = 4):
    """Items 2..19 only (the cold ones never appear), labels at the last position."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 20, (size, MAX_LEN), generator=gen)
    buckets = torch.randint(0, BUCKETS, (size, MAX_LEN), generator=gen)
    labels = torch.full_like(items, -100)
    labels[:, -1] = items[:, -1]
    return items, buckets, labels


def cold_mask(vocab: int = VOCAB) -> torch.Tensor:
    left_out = torch.zeros(vocab, dtype=torch.bool)
    left_out[list(COLD)] = True
    return left_out


def test_the_table_is_the_id_embedding_plus_the_projected_text():
    model = text_model()
    expected = model.item_embedding.weight + model.item_text @ model.text_projection.weight.T
    torch.testing.assert_close(model.item_table(), expected)
    items = torch.tensor([[3, 20, 7]])
    torch.testing.assert_close(model.item_vectors(items), expected[items])
    plain = Bert4Rec(tiny_config())
    assert plain.item_text is None and plain.item_table() is plain.item_embedding.weight


def test_a_never_trained_item_is_scored_by_its_text():
    """Cold items without ID evidence (zero rows) score by their text: the same text, the same
    score; another text, another score; and through the projection, not by accident."""
    model = text_model().eval()
    with torch.no_grad():
        model.item_embedding.weight[list(COLD)] = 0
    items, buckets, _ = warm_batch()
    scores = model.score_next(items, buckets)
    torch.testing.assert_close(scores[:, 20], scores[:, 21])
    assert (scores[:, 20] - scores[:, 22]).abs().min() > 1e-4
    assert scores[:, 20].abs().min() > 1e-4  # a real score, not a constant
    with torch.no_grad():
        model.text_projection.weight.zero_()
    torch.testing.assert_close(model.score_next(items, buckets)[:, 22], scores[:, 20] * 0)


def test_the_text_reaches_the_input_too():
    model = text_model().eval()
    items, buckets, _ = warm_batch()
    items[0, 3] = 22  # only the first history holds it
    before = model.query_state(items, buckets)
    text = model.item_text.clone()
    text[22] = -text[22]
    model.set_item_text(text)
    after = model.query_state(items, buckets)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:])


def test_left_out_items_are_not_pushed_down_by_the_softmax():
    """Without ``left_out`` a cold item's bias and ID row get a gradient at every step (it is
    always wrong); with it they get none, while the shared projection still learns."""
    items, buckets, labels = warm_batch()
    model = text_model()
    model(items, buckets, labels).loss.backward()
    assert model.output_bias.grad[list(COLD)].abs().min() > 0
    model.zero_grad()
    output = model(items, buckets, labels, left_out=cold_mask())
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert model.output_bias.grad[list(COLD)].abs().max() == 0
    assert model.item_embedding.weight.grad[list(COLD)].abs().max() == 0
    assert model.text_projection.weight.grad.abs().sum() > 0


def test_left_out_also_masks_sampled_negatives_and_never_a_target():
    from recsys_dist.model import NegativeSample

    items, buckets, labels = warm_batch()
    model = text_model()
    negatives = NegativeSample(torch.tensor([20, 21, 4, 9]), torch.tensor(0.0))
    model(items, buckets, labels, negatives=negatives, left_out=cold_mask()).loss.backward()
    assert model.output_bias.grad[list(COLD)].abs().max() == 0
    everything = torch.ones(VOCAB, dtype=torch.bool)  # targets stay in: a finite loss
    assert torch.isfinite(model(items, buckets, labels, left_out=everything).loss)
    with pytest.raises(ValueError, match="left_out shape"):
        model(items, buckets, labels, left_out=everything[:-1])


def test_save_and_load_keep_the_text(tmp_path):
    model = text_model().eval()
    model.save(tmp_path)
    loaded = Bert4Rec.load(tmp_path)
    torch.testing.assert_close(loaded.item_text, model.item_text)
    items, buckets, _ = warm_batch()
    torch.testing.assert_close(loaded.score_next(items, buckets), model.score_next(items, buckets))
    assert Bert4RecConfig.from_pretrained(tmp_path).item_text_dim == DIM


def test_int8_export_stores_the_text_and_scores_the_fused_table(tmp_path):
    model = text_model(vocab_size=200).eval()
    assert "item_text" in quantized_weights(model)
    quantize(model).save(tmp_path)
    loaded = load_model(tmp_path)
    torch.testing.assert_close(loaded.item_text, model.item_text, atol=0.01, rtol=0)
    items, buckets, _ = warm_batch()
    fp32 = model.score_next(items, buckets)[:, 2:]
    spread = float(fp32.max() - fp32.min())
    for kernel in (True, False):  # the int8 matmul, and fp32 over the dequantized weights
        loaded.int8_kernel = kernel
        error = (loaded.score_next(items, buckets)[:, 2:] - fp32).abs().max()
        assert error < 0.02 * spread


def test_warm_start_keeps_the_new_vocabularys_text():
    parent = text_model().eval()
    child = text_model(vocab_size=VOCAB + 3)
    own = text_matrix(VOCAB + 3, seed=1)
    child.set_item_text(own)
    rows = np.concatenate([np.arange(VOCAB), [-1, -1, -1]])
    warm_start(child, parent, rows)
    torch.testing.assert_close(child.item_text, own)
    torch.testing.assert_close(child.text_projection.weight, parent.text_projection.weight)
    torch.testing.assert_close(child.item_embedding.weight[:VOCAB], parent.item_embedding.weight)


def test_text_turned_on_in_a_warm_start_first_scores_as_the_id_only_parent():
    torch.manual_seed(0)
    parent = Bert4Rec(tiny_config()).eval()
    child = text_model().eval()
    warm_start(child, parent, np.arange(VOCAB))
    assert not child.text_projection.weight.any()
    items, buckets = warm_batch()[:2]
    torch.testing.assert_close(child.score_next(items, buckets), parent.score_next(items, buckets))
    with pytest.raises(ValueError, match="tensors differ"):  # text cannot be dropped silently
        warm_start(Bert4Rec(tiny_config()), text_model(), np.arange(VOCAB))


def test_a_chunked_loss_projects_the_text_once_and_equals_the_whole_one(monkeypatch):
    model = text_model().eval()
    items, buckets, labels = warm_batch()
    labels[:, -3:] = items[:, -3:]  # 12 labelled rows
    whole = model(items, buckets, labels)
    whole.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    projections = []
    monkeypatch.setattr(
        model.text_projection,
        "forward",
        lambda x: projections.append(x) or x @ model.text_projection.weight.T,
    )
    chunked = model(items, buckets, labels, max_logits=3 * VOCAB)  # 4 chunks of 3 rows
    chunked.loss.backward()
    assert len(projections) == 2  # the input's items, and the table once for all the chunks
    torch.testing.assert_close(chunked.loss, whole.loss)
    assert "text_projection.weight" in expected
    for name, param in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], msg=name)


def test_the_config_and_the_matrix_are_checked():
    with pytest.raises(ValueError, match="item_text_dim"):
        tiny_config(item_text=True)
    model = text_model()
    with pytest.raises(ValueError, match=r"\[vocab_size, item_text_dim\]"):
        model.set_item_text(torch.zeros(VOCAB, DIM + 1))
    with pytest.raises(ValueError, match="no item text"):
        Bert4Rec(tiny_config()).set_item_text(torch.zeros(VOCAB, DIM))


def test_id_dropout_drops_whole_items_in_training_and_never_in_evaluation():
    """One draw per step serves the input and the output; dropped items get no ID gradient
    (their vector was their text alone), PAD stays a zero row, MASK is never dropped."""
    torch.manual_seed(0)
    model = text_model(text_id_dropout=0.5, objective="cloze")
    items, buckets, labels = warm_batch(size=8)
    items[:, 2] = 1  # a MASK input: the cloze token has no text
    draws = []
    real = model._id_dropout
    model._id_dropout = lambda: draws.append(real()) or draws[-1]
    model(items, buckets, labels).loss.backward()
    (keep,) = draws
    assert keep[0] == 0 and keep[1] == 1 and 0 < keep[2:].sum() < VOCAB - 2
    grad = model.item_embedding.weight.grad
    dropped = (keep == 0).nonzero().flatten()
    assert grad[dropped].abs().max() == 0
    used = torch.unique(torch.cat([items.flatten(), labels[labels >= 0]]))
    kept_used = [int(i) for i in used if keep[i] == 1 and i > 1]
    assert grad[kept_used].abs().sum() > 0
    model.eval()
    assert model._id_dropout() is None
    assert text_model(text_id_dropout=0.0)._id_dropout() is None  # switched off


def test_untrained_items_keep_no_id_row_and_score_by_their_text():
    model = text_model(text_id_dropout=0.2).eval()
    before = model.item_embedding.weight.clone()
    untrained = cold_mask()
    untrained[:2] = True  # specials are never touched
    model.drop_untrained_ids(untrained)
    weight = model.item_embedding.weight
    assert weight[list(COLD)].abs().max() == 0
    torch.testing.assert_close(weight[:20], before[:20])
    torch.testing.assert_close(weight[23:], before[23:])
    items, buckets, _ = warm_batch()
    scores = model.score_next(items, buckets)
    torch.testing.assert_close(scores[:, 20], scores[:, 21])  # the same text, the same score


def test_id_dropout_is_checked():
    from recsys_dist.config import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="text_id_dropout"):
        ModelConfig(text_id_dropout=1.0)
