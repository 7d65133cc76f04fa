"""Checkpoint/export round trip: the saved directory alone rebuilds the exact model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys_dist import schema
from recsys_dist.checkpoint import (
    HASHES_FILE,
    RESUME_STATE_FILE,
    RESUME_TENSORS_FILE,
    STATE_FILE,
    TamperedModelError,
    export,
    load_checkpoint,
    save_checkpoint,
)
from recsys_dist.config import ModelConfig
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.model import WEIGHTS_FILE, Bert4Rec, Bert4RecConfig


@pytest.fixture
def vocab_file(tmp_path):
    vocab = Vocabulary.from_counts(pa.array([f"i{k}" for k in range(20)]), np.arange(20) + 1)
    path = tmp_path / schema.VOCAB_FILE
    vocab.save(str(path))
    return path


def trained_tiny_model(vocab_size: int) -> Bert4Rec:
    config = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = Bert4Rec(Bert4RecConfig.from_model_config(config, vocab_size, max_len=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    items = torch.randint(2, vocab_size, (4, 8))
    for _ in range(3):  # move the weights away from their initial values
        model(items, torch.zeros_like(items), items).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_round_trip_is_exact(tmp_path, vocab_file):
    model = trained_tiny_model(22)
    state = {"progress": {"epoch": 3}, "metrics": {"valid_ndcg@10": 0.5}}
    save_checkpoint(tmp_path / "ckpt", model, str(vocab_file), state)
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list(
        (tmp_path / "ckpt").glob("*.pt")
    )
    export(tmp_path / "ckpt", tmp_path / "model")
    loaded = load_checkpoint(tmp_path / "model")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    items = torch.randint(2, 22, (3, 8))
    items[:, -1] = schema.MASK_INDEX
    buckets = torch.randint(0, 4, (3, 8))
    assert torch.equal(
        model.score_next(items, buckets), loaded.model.eval().score_next(items, buckets)
    )
    assert loaded.vocab.to_item_ids(np.array([2, 21])).to_pylist() == ["i19", "i0"]
    assert loaded.state == json.loads((tmp_path / "model" / STATE_FILE).read_text())


def test_an_export_leaves_the_optimizer_state_out_and_still_verifies(tmp_path, vocab_file):
    """A training checkpoint carries resume state under its hashes; serving never needs it."""
    (tmp_path / "ckpt").mkdir()
    for name in (RESUME_TENSORS_FILE, RESUME_STATE_FILE):
        (tmp_path / "ckpt" / name).write_text("{}")
    save_checkpoint(tmp_path / "ckpt", trained_tiny_model(22), str(vocab_file), {"epoch": 1})
    hashes = json.loads((tmp_path / "ckpt" / HASHES_FILE).read_text())["sha256"]
    assert {RESUME_TENSORS_FILE, RESUME_STATE_FILE} <= set(hashes)
    export(tmp_path / "ckpt", tmp_path / "model")
    exported = {p.name for p in (tmp_path / "model").iterdir()}
    assert not exported & {RESUME_TENSORS_FILE, RESUME_STATE_FILE}
    assert load_checkpoint(tmp_path / "model").state == {"epoch": 1}  # its hashes check out


def test_a_tampered_checkpoint_is_not_exported(tmp_path, vocab_file):
    save_checkpoint(tmp_path / "ckpt", trained_tiny_model(22), str(vocab_file), {})
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(TamperedModelError, match="pytorch_model.bin"):
        export(tmp_path / "ckpt", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_vocabulary_size_must_match_the_weights(tmp_path, vocab_file):
    save_checkpoint(tmp_path / "ckpt", trained_tiny_model(30), str(vocab_file), {})
    with pytest.raises(ValueError, match="vocabulary has 22 entries but the model expects 30"):
        load_checkpoint(tmp_path / "ckpt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a recsys_dist checkpoint"):
        load_checkpoint(tmp_path)


def test_a_swapped_weight_file_or_a_planted_file_is_refused_before_loading(tmp_path, vocab_file):
    """``sha256.json`` lists every file: the real weights of another model, a flipped byte, a
    pickle planted beside the files, or a missing list each refuse the whole directory."""
    save_checkpoint(tmp_path / "good", trained_tiny_model(22), str(vocab_file), {})
    save_checkpoint(tmp_path / "other", trained_tiny_model(22), str(vocab_file), {})

    def tampered(name: str, change) -> str:
        target = tmp_path / name
        shutil.copytree(tmp_path / "good", target)
        change(target)
        return str(target)

    swapped = tampered("swapped", lambda d: shutil.copy(tmp_path / "other" / WEIGHTS_FILE, d))
    flipped = tampered("flipped", lambda d: _flip_last_byte(d / WEIGHTS_FILE))
    planted = tampered("planted", lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04."))
    unlisted = tampered("unlisted", lambda d: (d / HASHES_FILE).unlink())
    for directory, message in (
        (swapped, WEIGHTS_FILE),
        (flipped, WEIGHTS_FILE),
        (planted, "pytorch_model.bin"),
        (unlisted, f"no {HASHES_FILE}"),
    ):
        with pytest.raises(TamperedModelError, match=message):
            load_checkpoint(directory)
    assert load_checkpoint(tmp_path / "good").model is not None


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
