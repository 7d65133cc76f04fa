"""``export --quantize``: a serving artefact with int8 weights, beside the run's fp32 export.

The artefact has the checkpoint layout (``checkpoint.py``): ``config.json`` recording the
quantization, ``model.safetensors`` with int8 weights and float32 scales
(:mod:`recsys_dist.model.quantize`), the run's vocabulary, its ``state.json`` and a
``sha256.json`` over all of them. So ``load_checkpoint`` verifies and loads it like any export,
and ``Recommender``, ``serve --model DIR`` and batch scoring take it unchanged. The fp32
export stays the default: this is an option for serving large catalogues on CPU.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from recsys_dist import schema, storage
from recsys_dist.checkpoint import load_checkpoint, save_checkpoint
from recsys_dist.errors import OutputExistsError, UserInputError
from recsys_dist.inference.predictor import model_version
from recsys_dist.model.bert4rec import WEIGHTS_FILE
from recsys_dist.model.quantize import SCHEMES, quantize

logger = logging.getLogger(__name__)


def export_quantized(
    model_dir: str, output: str, scheme: str, overwrite: bool = False
) -> dict[str, Any]:
    """Write ``model_dir`` (an fp32 export, local or ``s3://``) quantized to ``output``.

    Args:
        model_dir: The export to quantize, e.g. ``run_layout.model_dir(RUN)``.
        output: A new directory (local or ``s3://``) for the quantized export.
        scheme: One of :data:`recsys_dist.model.quantize.SCHEMES`.
        overwrite: Replace what ``output`` holds.

    Returns:
        Where it went, its scheme and version name, and the sizes of both exports in bytes.

    Raises:
        UserInputError: An unknown scheme, a model that already is quantized, an output that
            is the source or (without ``overwrite``) already holds files.
    """
    check_scheme(scheme)
    target, source = (storage.absolute(path).rstrip("/") for path in (output, model_dir))
    if f"{source}/".startswith(f"{target}/"):  # replacing it would delete the source
        raise UserInputError(f"--output {output} holds the export being quantized; give another")
    if storage.exists(output) and not (overwrite or storage.is_empty_dir(output)):
        raise OutputExistsError(f"--output {output} already holds files; pass --overwrite")
    loaded = load_checkpoint(model_dir)  # verified against its sha256.json first
    model = quantize(loaded.model, scheme)
    source = model_version(loaded.state, model_dir)
    state = {**loaded.state, "quantization": scheme, "model_version": f"{source}-{scheme}"}
    with tempfile.TemporaryDirectory(prefix="recsys-dist-quantize-") as staging:
        vocab = storage.join(model_dir, schema.VOCAB_FILE)
        save_checkpoint(staging, model, vocab, state)  # writes and seals sha256.json
        sizes = _sizes(Path(staging))
        storage.delete_dir(output)
        storage.copy_dir(staging, output)
    logger.info("wrote %s (%s, %d bytes)", output, scheme, sizes["bytes"])
    return {
        "output": output,
        "source": model_dir,
        "quantization": scheme,
        "model_version": state["model_version"],
        "bytes": sizes["bytes"],
        "weights_bytes": sizes["weights_bytes"],
        "source_bytes": export_bytes(model_dir),
    }


def check_scheme(scheme: str) -> None:
    """Refuse a ``--quantize`` value this version cannot write (checked before Ray or any load).

    Raises:
        UserInputError: Naming the value and the schemes there are.
    """
    if scheme not in SCHEMES:
        raise UserInputError(f"--quantize {scheme!r}: choose one of {', '.join(SCHEMES)}")


def export_bytes(model_dir: str) -> int:
    """Bytes of every file of an export (local or ``s3://``)."""
    return sum(stat.size for stat in storage.list_file_stats(model_dir, ""))


def _sizes(directory: Path) -> dict[str, int]:
    files = [path for path in directory.rglob("*") if path.is_file()]
    return {
        "bytes": sum(path.stat().st_size for path in files),
        "weights_bytes": (directory / WEIGHTS_FILE).stat().st_size,
    }
