"""Optional experiment tracking with MLflow: on when ``MLFLOW_TRACKING_URI`` is set.

Three kinds of MLflow run, in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default
``recsys_dist``), each tagged ``recsys_dist.kind``:

- ``train``: a finished training run's settings (``config.yaml``, flattened to
  ``section.key`` params) and every validation line of its ``metrics.jsonl`` (step = epoch).
  Logged by the driver when training ends, from the run's own record, so a run on S3 or one
  resumed after a failure is logged once, whole.
- ``version``: a registered model version and its lineage (parent, source run, dataset hash,
  event-time span, event files taken, code version) as tags and params, its metrics.
- ``retrain``: one turn of the loop: parent, candidate, the gate's two sides, the decision.

Every registered version is also a version of the registered model ``MLFLOW_REGISTERED_MODEL``
(default ``recsys_dist``) in MLflow's Model Registry: its source is the version's directory in
our registry (the files stay there, checksummed; MLflow holds the pointer and the lineage),
its run the ``version`` run above, its tags the version id and parent. Promotion and rollback
move the alias ``current`` (:data:`CURRENT_ALIAS`), so ``models:/recsys_dist@current``
names what serves. Our registry stays the source of truth the service follows.

Unset, nothing is imported and nothing is written. MLflow's own client does the talking; the
store is whatever the URI names (a tracking server, a database, a folder).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from recsys_dist import run_layout

log = logging.getLogger(__name__)

URI_ENV = "MLFLOW_TRACKING_URI"
MODEL_ENV = "MLFLOW_REGISTERED_MODEL"
DEFAULT_MODEL = "recsys_dist"
CURRENT_ALIAS = "current"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "recsys_dist"
KIND_TAG = "recsys_dist.kind"

F = TypeVar("F", bound=Callable[..., Any])


def enabled() -> bool:
    return bool(os.environ.get(URI_ENV))


def best_effort(fn: F) -> F:
    """Tracking is a copy of what the run, the registry and the turn already record: a
    tracking server that is down is logged as a warning, and never fails hours of training
    or a registration."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not enabled():
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any MLflow or network failure
            log.warning("MLflow tracking (%s) failed: %s", fn.__name__, error)
            return None

    return wrapper  # type: ignore[return-value]


@best_effort
def log_training(run_dir: str) -> str | None:
    """Log a finished run (its settings and per-epoch metrics); the MLflow run id."""
    settings = run_layout.read_settings(run_dir)
    epochs = run_layout.read_metrics(run_dir)
    with _start(
        "train", run_name=run_dir.rstrip("/").rsplit("/", 1)[-1], tags={"recsys_dist.run": run_dir}
    ):
        import mlflow

        mlflow.log_params(_flatten(settings))
        for line in epochs:
            mlflow.log_metrics(_numbers(line), step=int(line["epoch"]))
        return mlflow.active_run().info.run_id


@best_effort
def log_version(record: Mapping[str, Any], path: str) -> str | None:
    """Log a registered version's record (``version.json``: lineage as tags, metrics) and
    add it, with ``path`` as its source, to MLflow's Model Registry; the MLflow run id."""
    data, code = record.get("data") or {}, record.get("code") or {}
    tags = {
        "recsys_dist.version": record["version"],
        "recsys_dist.parent": record.get("parent") or "",
        "recsys_dist.source_run": record.get("source_run") or "",
        "recsys_dist.data_hash": data.get("data_hash") or "",
        "recsys_dist.git_sha": code.get("git_sha") or "",
    }
    with _start("version", run_name=record["version"], tags=tags):
        import mlflow

        mlflow.log_params(
            {
                "event_time_range": json.dumps(data.get("event_time_range")),
                "input_files": len(data.get("input_files") or []),
                "events": data.get("events"),
                "users": data.get("users"),
                "items": data.get("items"),
                "package": code.get("package"),
            }
        )
        mlflow.log_metrics(_numbers(_flatten(record.get("metrics") or {})))
        mlflow.log_dict(dict(record), "version.json")
        run_id = mlflow.active_run().info.run_id
    client, name = _registered_model()
    client.create_model_version(
        name, source=path, run_id=run_id, tags={k: v for k, v in tags.items() if v}
    )
    return run_id


@best_effort
def log_current(version: str) -> int | None:
    """Point the registered model's ``current`` alias at ``version`` (a promotion or a
    rollback); the MLflow version number, or None if MLflow never saw ``version``."""
    client, name = _registered_model()
    for found in client.search_model_versions(f"name='{name}'"):
        if found.tags.get("recsys_dist.version") == version:
            client.set_registered_model_alias(name, CURRENT_ALIAS, found.version)
            return int(found.version)
    log.warning("MLflow has no version %s of %s: alias %s not moved", version, name, CURRENT_ALIAS)
    return None


def _registered_model():
    """MLflow's client and the registered model's name (created on first use)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, name = mlflow.MlflowClient(), os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="recsys_dist model versions")
    return client, name


@best_effort
def log_turn(result: Mapping[str, Any]) -> str | None:
    """Log one retraining turn: what it took, the gate's two sides, the decision."""
    tags = {
        "recsys_dist.parent": result["parent"],
        "recsys_dist.candidate": result["candidate"] or "",
        "recsys_dist.promoted": str(result["promoted"]).lower(),
        "recsys_dist.reason": result["reason"][:5000],
    }
    with _start("retrain", run_name=f"retrain {result['parent']}", tags=tags):
        import mlflow

        counts = {k: result[k] for k in ("new_files", "new_items", "events") if k in result}
        sides = {"candidate": result["candidate_metrics"], "current": result["current_metrics"]}
        mlflow.log_metrics(
            _numbers({**counts, **_flatten({**sides, "drift": result.get("drift") or {}})})
        )
        return mlflow.active_run().info.run_id


def _start(kind: str, run_name: str, tags: Mapping[str, str]):
    try:
        import mlflow
    except ImportError as error:
        raise ImportError(
            f"{URI_ENV} is set but MLflow is not installed: pip install 'recsys-dist[tracking]'"
        ) from error

    mlflow.set_experiment(os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)
    return mlflow.start_run(run_name=run_name, tags={KIND_TAG: kind, **tags})


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (MLflow metrics are floats; booleans and strings are left out)."""
    return {
        k.replace("@", "_at_"): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
