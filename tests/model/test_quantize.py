"""Int8 weights (model/quantize.py) on a tiny untrained model: the format on disk, the round
trip, and scores within a stated tolerance of fp32.

Tolerance: every finite score within 2 % of the fp32 scores' range (max - min over the
batch; measured 0.6-0.9 % on these models), and the top-10 lists agree on at least 90 % of
their items on average (measured 98.6-100 %). A trained model spreads its scores further, so
the same int8 error reorders less there (docs/benchmarks.md, "Quantized fast path").
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from recsys_dist.errors import UserInputError
from recsys_dist.model import WEIGHTS_FILE, Bert4Rec
from recsys_dist.model.quantize import (
    CONFIG_KEY,
    SCALE_SUFFIX,
    Int8Bert4Rec,
    dequantize_rows,
    load_model,
    quantize,
    quantize_rows,
    quantized_weights,
)
from recsys_dist.schema import MASK_INDEX, NUM_SPECIAL_TOKENS

from .tiny import BUCKETS, MAX_LEN, tiny_config

VOCAB = 500  # more items than tiny.VOCAB, so a top-10 is a real choice
SCORE_TOLERANCE = 0.02  # of the fp32 scores' range
TOP10_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def fp32() -> Bert4Rec:
    torch.manual_seed(0)
    return Bert4Rec(tiny_config(vocab_size=VOCAB)).eval()


@pytest.fixture(scope="module")
def histories() -> tuple[torch.Tensor, torch.Tensor]:
    """64 histories with MASK appended, as ``score_next`` takes them."""
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(NUM_SPECIAL_TOKENS, VOCAB, (64, MAX_LEN), generator=gen)
    items[:, -1] = MASK_INDEX
    return items, torch.randint(0, BUCKETS, (64, MAX_LEN), generator=gen)


def top10_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean share of each row's top-10 items that both score tensors put in their top 10."""
    top_a, top_b = a.topk(10).indices.tolist(), b.topk(10).indices.tolist()
    return sum(len(set(x) & set(y)) for x, y in zip(top_a, top_b)) / (10 * len(top_a))


def test_rows_quantize_to_int8_with_one_scale_each():
    weight = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    ints, scale = quantize_rows(weight)
    assert ints.dtype == torch.int8 and scale.shape == (3,)
    assert ints.abs().max(dim=1).values.tolist() == [127, 0, 127]  # each row's largest -> 127
    assert dequantize_rows(ints, scale)[1].tolist() == [0.0, 0.0, 0.0]  # PAD's row stays zero
    assert torch.allclose(dequantize_rows(ints, scale), weight, atol=float(scale.max()) / 2)


def test_linears_and_the_item_table_are_quantized(fp32):
    names = quantized_weights(fp32)
    assert "bert.embeddings.word_embeddings.weight" in names  # the tied table
    assert "head_dense.weight" in names
    assert "bert.embeddings.position_embeddings.weight" not in names
    linears = [m for m in fp32.modules() if isinstance(m, torch.nn.Linear)]
    assert len(names) == len(linears) + 1


def test_scores_stay_within_the_tolerance_of_fp32(fp32, histories):
    model = quantize(fp32)
    expected, got = fp32.score_next(*histories), model.score_next(*histories)
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(got))  # PAD and MASK still -inf
    spread = float(expected[finite].max() - expected[finite].min())
    assert float((got - expected)[finite].abs().max()) <= SCORE_TOLERANCE * spread
    assert top10_agreement(expected, got) >= TOP10_AGREEMENT


def test_the_int8_kernel_and_the_dequantized_table_agree(fp32, histories):
    model = quantize(fp32)
    if model._table is None:
        pytest.skip("this torch build has no int8 matmul kernel")
    kernel = model.score_next(*histories)
    model.int8_kernel = False
    try:
        dequantized = model.score_next(*histories)
    finally:
        model.int8_kernel = True
    finite = torch.isfinite(dequantized)
    spread = float(dequantized[finite].max() - dequantized[finite].min())
    assert float((kernel - dequantized)[finite].abs().max()) <= SCORE_TOLERANCE * spread


def test_a_row_scores_the_same_whatever_shares_its_batch(fp32, histories):
    model = quantize(fp32)
    together = model.score_next(*histories)
    alone = torch.cat([model.score_next(i[None], t[None]) for i, t in zip(*histories)])
    # The encoder's fp32 matmuls may differ in the last bit by batch size; the int8 kernel
    # quantizes each row on its own, so nothing larger moves.
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)


def test_saved_int8_weights_round_trip_smaller_and_without_pickles(fp32, histories, tmp_path):
    model = quantize(fp32)
    model.save(tmp_path / "int8")
    fp32.save(tmp_path / "fp32")
    int8_bytes = (tmp_path / "int8" / WEIGHTS_FILE).stat().st_size
    assert int8_bytes < 0.5 * (tmp_path / "fp32" / WEIGHTS_FILE).stat().st_size
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config[CONFIG_KEY] == {"scheme": "int8", "weights": quantized_weights(fp32)}
    with safe_open(str(tmp_path / "int8" / WEIGHTS_FILE), "pt") as stored:
        for name in config[CONFIG_KEY]["weights"]:
            assert stored.get_tensor(name).dtype == torch.int8
            assert stored.get_tensor(name + SCALE_SUFFIX).dtype == torch.float32
    loaded = load_model(tmp_path / "int8")
    assert isinstance(loaded, Int8Bert4Rec) and not loaded.training
    assert torch.equal(loaded.score_next(*histories), model.score_next(*histories))
    assert type(load_model(tmp_path / "fp32")) is Bert4Rec
    loaded.save(tmp_path / "again")  # saving a loaded int8 model writes the same file
    # (the same tensors and metadata: safetensors writes the metadata keys in no fixed order)
    with (
        safe_open(str(tmp_path / "again" / WEIGHTS_FILE), "pt") as again,
        safe_open(str(tmp_path / "int8" / WEIGHTS_FILE), "pt") as first,
    ):
        assert again.metadata() == first.metadata() and again.keys() == first.keys()
        assert all(torch.equal(again.get_tensor(k), first.get_tensor(k)) for k in first.keys())


def test_unknown_schemes_are_refused(fp32, tmp_path):
    with pytest.raises(UserInputError, match="int4"):
        quantize(fp32, "int4")
    with pytest.raises(UserInputError, match="already quantized"):
        quantize(quantize(fp32))
    quantize(fp32).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[CONFIG_KEY]["scheme"] = "int4"  # written by some later version
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="int4"):
        load_model(tmp_path)
