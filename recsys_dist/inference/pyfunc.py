"""A registered version as an MLflow pyfunc model: ``models:/recsys_dist@current`` scores.

``mlflow.pyfunc.load_model("models:/recsys_dist@current").predict(histories)`` takes a pandas
DataFrame of histories, the batch predictor's input columns (``user_id``, ``item_ids``: raw
ids oldest first, ``timestamps``: int seconds) and an optional ``k`` per row, and returns its
output columns (``user_id``, ``recommended``, ``scores``, ``unknown_items``, and
``predicted_ratings`` for a model with a rating head), each row scored by the one
:class:`~recsys_dist.inference.predictor.Recommender`.

The export is copied into MLflow's artifact store (the model's ``artifacts/model/``), so a
``models:/`` URI loads from MLflow alone, without our registry. MLflow loads the model from
code (:data:`MODEL_CODE`, MLflow's recommended form: no pickle); the code needs
``recsys-dist`` installed where it loads, as our own serving does.

Imported only where MLflow is: ``tracking.log_version`` names this module by its path.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from recsys_dist import schema, storage
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.inference.predictor import (
    PREDICTED_RATINGS,
    RECOMMENDED,
    SCORES,
    UNKNOWN_ITEMS,
    Recommender,
)
from recsys_dist.model import Bert4RecConfig

K = "k"  # optional int input: how many items for this row (default: the predictor's k)
MODEL_ARTIFACT = "model"  # the export, under the MLflow model's artifacts
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what MLflow runs to load it
EXAMPLE_TIME = 1_700_000_000  # the input example's first event time (any time will do)


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """``predict(histories) -> top-k per row``, by the predictor built from the export."""

    def load_context(self, context) -> None:
        self.recommender = Recommender(context.artifacts[MODEL_ARTIFACT])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Top-k of every history row: the batch predictor's output columns."""
        frame = pd.DataFrame(model_input)
        ks = None
        if K in frame and frame[K].notna().any():
            default = self.recommender.k
            ks = [int(k) if pd.notna(k) else default for k in frame[K]]
        found = self.recommender.recommend(
            [list(items) for items in frame[schema.ITEM_IDS]],
            [np.asarray(times, np.int64) for times in frame[schema.TIMESTAMPS]],
            ks=ks,
        )
        out = {
            schema.USER_ID: frame[schema.USER_ID].astype(str).to_list(),
            RECOMMENDED: found.item_ids,
            SCORES: [row.tolist() for row in found.scores],
            UNKNOWN_ITEMS: found.unknown_items.tolist(),
        }
        if found.ratings is not None:
            out[PREDICTED_RATINGS] = [row.tolist() for row in found.ratings]
        return pd.DataFrame(out)


def signature(rated: bool) -> ModelSignature:
    """Histories in, the batch predictor's columns out (``predicted_ratings`` if ``rated``)."""
    inputs = Schema(
        [
            ColSpec(DataType.string, schema.USER_ID),
            ColSpec(Array(DataType.string), schema.ITEM_IDS),
            ColSpec(Array(DataType.long), schema.TIMESTAMPS),
            ColSpec(DataType.long, K, required=False),
        ]
    )
    outputs = [
        ColSpec(DataType.string, schema.USER_ID),
        ColSpec(Array(DataType.string), RECOMMENDED),
        ColSpec(Array(DataType.float), SCORES),
        ColSpec(DataType.long, UNKNOWN_ITEMS),
    ]
    if rated:
        outputs.append(ColSpec(Array(DataType.float), PREDICTED_RATINGS))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def input_example(model_dir: str) -> pd.DataFrame:
    """Two histories of the export's most popular items (a real request, not a made-up one)."""
    vocab = Vocabulary.load(storage.join(model_dir, schema.VOCAB_FILE))
    counts = vocab.popularity()[schema.NUM_SPECIAL_TOKENS :]
    top = np.argsort(-counts, kind="stable")[:3] + schema.NUM_SPECIAL_TOKENS
    items = vocab.to_item_ids(top).to_pylist()
    return pd.DataFrame(
        {
            schema.USER_ID: ["u1", "u2"],
            schema.ITEM_IDS: [items, items[:1]],
            schema.TIMESTAMPS: [
                [EXAMPLE_TIME + 60 * i for i in range(len(items))],
                [EXAMPLE_TIME],
            ],
            K: [5, 3],
        }
    )


def log_model(model_dir: str, name: str = "model"):
    """Log the export ``model_dir`` (local or ``s3://``) as a pyfunc model of the active run,
    its files copied into MLflow's artifact store; MLflow's ``ModelInfo``.

    Requirements are given, not inferred (inference imports the model and may reach the
    network): this package, which pins its own, and the MLflow that wrote the model.
    """
    with storage.local_dir(model_dir) as local:
        rated = Bert4RecConfig.from_pretrained(local).rating_scale() is not None
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={MODEL_ARTIFACT: local},
            signature=signature(rated),
            input_example=input_example(local),
            pip_requirements=requirements(),
        )


def requirements() -> list[str]:
    """``recsys-dist`` and MLflow, pinned to what is installed."""
    pinned = []
    for package in ("recsys-dist", "mlflow-skinny"):
        try:
            pinned.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned
