"""``evaluate``: score a trained run on its validation or test split, and a baseline.

The protocol is the run's own (the ``eval`` section it was trained and validated with)
unless the caller gives another. The run directory and the prepared dataset may each be
local or ``s3://``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recsys_dist import run_layout, schema, storage
from recsys_dist.checkpoint import load_checkpoint
from recsys_dist.config import EvalConfig, load_config
from recsys_dist.data.catalogue import catalogue_dir, read_categories
from recsys_dist.data.prepared import read_split
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import UserInputError
from recsys_dist.evaluation.beyond import Exposure, category_codes
from recsys_dist.evaluation.metrics import finalize_metrics
from recsys_dist.evaluation.ranking import (
    evaluation_sums,
    model_scorer,
    popularity_scorer,
    protocol,
)
from recsys_dist.evaluation.ratings import rating_errors


def evaluate_run(
    run_dir: str,
    split: str,
    eval_config: EvalConfig | None = None,
    data_dir: str | None = None,
    model_dir: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``RUN/model`` (or another export of it) and of the most-popular baseline on
    ``split``.

    Args:
        run_dir: A trained run.
        split: ``"valid"`` or ``"test"``.
        eval_config: The ranking protocol; default: the run's saved ``eval`` section.
        data_dir: A prepared dataset; default: the one the run was trained on.
        model_dir: Another export of the run's model (e.g. its int8 one); default: RUN/model.
    """
    if split not in (schema.VALID_SPLIT, schema.TEST_SPLIT):
        raise UserInputError(f"split (--split) must be 'valid' or 'test', got {split!r}")
    if eval_config is None:
        eval_config = load_config(None, run_layout.saved_settings(run_dir, ["eval"])).eval
    data_dir = data_dir or run_layout.prepared_dir_of(run_dir)
    loaded = load_checkpoint(model_dir or run_layout.model_dir(run_dir))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)
    # The data's own vocabulary: an appended dataset may know items the model never saw.
    vocab = Vocabulary.load(storage.join(data_dir, schema.VOCAB_FILE))
    popularity = vocab.popularity().astype(np.float64)
    rows = read_split(data_dir, split, eval_config.targets_after)
    config = model.config
    categories = read_categories(catalogue_dir(data_dir))
    items = vocab.item_ids.to_pylist()
    codes = category_codes(items, categories, vocab.size) if categories else None
    k = 10 if 10 in eval_config.ks else max(eval_config.ks)
    results, beyond = {}, {}
    for name, scorer in (
        ("model", model_scorer(model, device, vocab.size)),
        ("popularity", popularity_scorer(popularity, device)),
    ):
        batches = rows.iter_batches(batch_size=eval_config.batch_size, batch_format="numpy")
        exposure = Exposure(vocab.size, k, codes)
        sums = evaluation_sums(
            scorer,
            batches,
            eval_config,
            config.max_len,
            config.num_time_buckets,
            device,
            popularity,
            event_ages=config.use_event_ages,
            exposure=exposure,
            rating_scale=config.rating_scale(),
        )
        results[name] = finalize_metrics(sums)
        beyond[name] = {"k": k, **exposure.summary(popularity)}
    ratings = {}
    if config.rating_head:  # RMSE/MAE beside the ranking, and the rating baselines
        batches = rows.iter_batches(batch_size=eval_config.batch_size, batch_format="numpy")
        ratings = {"ratings": rating_errors(model, batches, device)}
    return {
        "split": split,
        "protocol": protocol(eval_config),
        "users": int(results["model"].pop("count")),
        **results["model"],
        "beyond_accuracy": beyond["model"],
        "baseline_popularity": {
            **{k: v for k, v in results["popularity"].items() if k != "count"},
            "beyond_accuracy": beyond["popularity"],
        },
        **ratings,
    }
