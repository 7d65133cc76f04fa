"""Checkpoint and export layout: one self-contained directory that rebuilds the model.

    DIR/config.json        the model config (HF style)
    DIR/model.safetensors  consolidated weights (no pickles)
    DIR/vocab.parquet      the item vocabulary the weights were trained with
    DIR/state.json         what produced it: epoch, step, metrics, config, data hash

A checkpoint reported during training and the exported ``RUN/model`` (see
:mod:`recsys_dist.run_layout`) share this layout, so the best checkpoint is exported by
copying it. Checkpoints are written locally (Ray Train uploads them to the run's storage);
loading and exporting accept local or ``s3://`` dirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_dist import schema, storage
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.model import Bert4Rec

# The checkpoint's own name; config.json and model.safetensors are the model's (model/),
# vocab.parquet the schema's, and where a run keeps its export is run_layout's.
STATE_FILE = "state.json"


@dataclass
class LoadedModel:
    model: Bert4Rec
    vocab: Vocabulary
    state: dict[str, Any]


def save_checkpoint(directory: str | Path, model: Bert4Rec, vocab_path: str, state: dict) -> None:
    """Write model, vocabulary and state into a local directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory)
    fs, inner = storage.resolve(vocab_path)
    fs_local, target = storage.resolve(directory / schema.VOCAB_FILE)
    with fs.open_input_stream(inner) as src, fs_local.open_output_stream(target) as dst:
        dst.write(src.read())
    storage.write_json(directory / STATE_FILE, state)


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> LoadedModel:
    """Rebuild the model exactly as saved, with its vocabulary and state.

    An ``s3://`` directory is copied to a local temporary directory once (the weights and HF
    config are read from local files), and the copy is removed once the model is in memory.
    """
    if not storage.exists(storage.join(directory, STATE_FILE)):
        raise FileNotFoundError(f"{directory}: not a recsys_dist checkpoint (no {STATE_FILE})")
    with storage.local_dir(directory) as local:
        model = Bert4Rec.load(local, map_location=map_location)
        vocab = Vocabulary.load(storage.join(local, schema.VOCAB_FILE))
        state = storage.read_json(storage.join(local, STATE_FILE))
    if vocab.size != model.config.vocab_size:
        raise ValueError(
            f"{directory}: vocabulary has {vocab.size} entries but the model expects "
            f"{model.config.vocab_size}"
        )
    return LoadedModel(model, vocab, state)


def export(checkpoint_dir: str | Path, model_dir: str | Path) -> None:
    """Copy a checkpoint to ``model_dir`` (local or ``s3://``), replacing what it holds."""
    storage.delete_dir(model_dir)
    storage.copy_dir(checkpoint_dir, model_dir)
