"""``evaluate``: score a trained run on its validation or test split, and a baseline.

The run directory and the prepared dataset may each be local or ``s3://``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recsys_dist import schema, storage
from recsys_dist.checkpoint import MODEL_DIR, load_checkpoint
from recsys_dist.config import EvalConfig
from recsys_dist.data.prepared import read_split
from recsys_dist.evaluation.metrics import finalize_metrics
from recsys_dist.evaluation.ranking import (
    evaluation_sums,
    model_scorer,
    popularity_scorer,
    protocol,
)

RUN_FILE = "run.json"  # written by training: where the prepared data lives


def prepared_dir_of(run_dir: str) -> str:
    """The prepared dataset a run was trained on (recorded in ``RUN/run.json``)."""
    return storage.read_json(storage.join(run_dir, RUN_FILE))["prepared"]


def evaluate_run(
    run_dir: str, split: str, eval_config: EvalConfig, data_dir: str | None = None
) -> dict[str, Any]:
    """Metrics of ``RUN_DIR/model`` and of the most-popular baseline on ``split``."""
    if split not in (schema.VALID_SPLIT, schema.TEST_SPLIT):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    data_dir = data_dir or prepared_dir_of(run_dir)
    loaded = load_checkpoint(storage.join(run_dir, MODEL_DIR))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)
    popularity = loaded.vocab.popularity().astype(np.float64)
    rows = read_split(data_dir, split)
    config = model.config
    results = {}
    for name, scorer in (
        ("model", model_scorer(model, device)),
        ("popularity", popularity_scorer(popularity, device)),
    ):
        batches = rows.iter_batches(batch_size=eval_config.batch_size, batch_format="numpy")
        sums = evaluation_sums(
            scorer,
            batches,
            eval_config,
            config.max_len,
            config.num_time_buckets,
            device,
            popularity,
        )
        results[name] = finalize_metrics(sums)
    return {
        "split": split,
        "protocol": protocol(eval_config),
        "users": int(results["model"].pop("count")),
        **results["model"],
        "baseline_popularity": {k: v for k, v in results["popularity"].items() if k != "count"},
    }
