"""Checkpoint and export layout: one self-contained directory that rebuilds the model.

    DIR/config.json        the model config (HF style)
    DIR/model.safetensors  consolidated weights (no pickles)
    DIR/vocab.parquet      the item vocabulary the weights were trained with
    DIR/state.json         what produced it: epoch, step, metrics, config, data hash
    DIR/sha256.json        the SHA-256 of every other file: checked before anything loads
    DIR/resume.safetensors a training checkpoint only: the optimizer's tensors, and
    DIR/resume.json        its other fields and the scheduler's (train/resume.py); an
                           export leaves both out, as serving and warm starts never use them

A checkpoint reported during training and the exported ``RUN/model`` (see
:mod:`recsys_dist.run_layout`) share this layout, so the best checkpoint is exported by
copying it. Checkpoints are written locally (Ray Train uploads them to the run's storage);
loading and exporting accept local or ``s3://`` dirs.

A directory whose files do not match ``sha256.json`` (a weight file swapped or corrupted, a
file planted beside them, say a pickle for a loader to find) is refused before anything in it
is read: an export travels through object stores and registries that other people can write.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_dist import schema, storage
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import UserInputError
from recsys_dist.model import Bert4Rec
from recsys_dist.model.quantize import load_model

# The checkpoint's own name; config.json and model.safetensors are the model's (model/),
# vocab.parquet the schema's, and where a run keeps its export is run_layout's.
STATE_FILE = "state.json"
HASHES_FILE = "sha256.json"
RESUME_TENSORS_FILE = "resume.safetensors"
RESUME_STATE_FILE = "resume.json"


class TamperedModelError(UserInputError):
    """An export whose files are not the ones its ``sha256.json`` lists."""


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
    seal(directory)


def seal(directory: str | Path) -> None:
    """(Re)write a local directory's ``sha256.json``: after every change to its files."""
    directory = Path(directory)
    hashes = {name: _sha256(directory / name) for name in _files(directory)}
    storage.write_json(directory / HASHES_FILE, {"sha256": hashes})


def verify(directory: str | Path, shown_as: str | Path) -> None:
    """Refuse a local directory whose files differ from its ``sha256.json`` in any way."""
    directory = Path(directory)
    listing = directory / HASHES_FILE
    if not listing.is_file():
        raise TamperedModelError(f"{shown_as}: no {HASHES_FILE}; not an export this version made")
    expected = storage.read_json(listing)["sha256"]
    found = _files(directory)
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise TamperedModelError(f"{shown_as}: unexpected file(s) {unexpected}; refused")
    for name, digest in expected.items():
        if name not in found or _sha256(directory / name) != digest:
            raise TamperedModelError(
                f"{shown_as}/{name}: missing or not the file {HASHES_FILE} lists; refused"
            )


def _files(directory: Path) -> list[str]:
    """Every file under ``directory`` but the hash list, as relative paths."""
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
        if os.path.join(root, name) != str(directory / HASHES_FILE)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> LoadedModel:
    """Rebuild the model exactly as saved, with its vocabulary and state.

    An ``s3://`` directory is copied to a local temporary directory once (the weights and HF
    config are read from local files), and the copy is removed once the model is in memory.
    """
    if not storage.exists(storage.join(directory, STATE_FILE)):
        raise FileNotFoundError(f"{directory}: not a recsys_dist checkpoint (no {STATE_FILE})")
    with storage.local_dir(directory) as local:
        verify(local, directory)
        model = load_model(local, map_location=map_location)  # fp32, or int8 (model/quantize.py)
        vocab = Vocabulary.load(storage.join(local, schema.VOCAB_FILE))
        state = storage.read_json(storage.join(local, STATE_FILE))
    if vocab.size != model.config.vocab_size:
        raise ValueError(
            f"{directory}: vocabulary has {vocab.size} entries but the model expects "
            f"{model.config.vocab_size}"
        )
    return LoadedModel(model, vocab, state)


def export(checkpoint_dir: str | Path, model_dir: str | Path) -> None:
    """Copy a local checkpoint, less its training-only files, to ``model_dir`` (local or
    ``s3://``), replacing what it holds; its ``sha256.json`` lists what was copied."""
    checkpoint_dir = Path(checkpoint_dir)
    verify(checkpoint_dir, checkpoint_dir)
    left_out = {RESUME_TENSORS_FILE, RESUME_STATE_FILE, HASHES_FILE}
    hashes = storage.read_json(checkpoint_dir / HASHES_FILE)["sha256"]
    with tempfile.TemporaryDirectory(prefix="recsys-dist-export-") as staging:
        for name in hashes:
            if name not in left_out:
                target = Path(staging, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(checkpoint_dir / name, target)
        kept = {name: digest for name, digest in hashes.items() if name not in left_out}
        storage.write_json(Path(staging, HASHES_FILE), {"sha256": kept})
        storage.delete_dir(model_dir)
        storage.copy_dir(staging, model_dir)
