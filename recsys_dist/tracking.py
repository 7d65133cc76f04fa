"""Optional experiment tracking with MLflow: on when ``MLFLOW_TRACKING_URI`` is set.

Three kinds of MLflow run, in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default
``recsys_dist``), each tagged ``recsys_dist.kind``:

- ``train``: one per training run directory. Its metrics arrive live: Ray Train's controller
  calls ``train.tracking_callback.TrackMetrics`` after every report, which starts the run at
  the first one (:func:`start_training`, its id kept in ``RUN/mlflow_run.json``, so a
  training resumed after a failure goes on in the same MLflow run) and logs each report's
  numbers at step = epoch (:func:`log_report`). When training ends the driver adds what only
  then is known (:func:`log_training`): the settings (``config.yaml``, flattened to
  ``section.key`` params), the export's path, any validation line of ``metrics.jsonl`` the
  live logging missed (all of them if no callback ran), and finishes the run.
- ``version``: a registered model version and its lineage (parent, source run, dataset hash,
  event-time span, event files taken, code version) as tags and params, its metrics, and the
  version as an MLflow pyfunc model (``inference/pyfunc.py``): the export copied into
  MLflow's artifact store, a signature and an input example.
- ``retrain``: one turn of the loop: parent, candidate, the gate's two sides, the decision.

Every registered version is also a version of the registered model ``MLFLOW_REGISTERED_MODEL``
(default ``recsys_dist``) in MLflow's Model Registry: its source is that pyfunc model, its run
the ``version`` run above, its tags the version id, parent, data hash, code version and our
registry's directory. Promotion and rollback move the alias ``current``
(:data:`CURRENT_ALIAS`), so ``mlflow.pyfunc.load_model("models:/recsys_dist@current")``
loads and scores what serves, from MLflow's store alone. Our registry stays the source of
truth the service follows; MLflow mirrors it, best effort.

Unset, nothing is imported and nothing is written. MLflow's own client does the talking; the
store is whatever the URI names (a tracking server, a database such as ``sqlite:///mlflow.db``,
MLflow's recommended local store).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from recsys_dist import run_layout, storage

log = logging.getLogger(__name__)

URI_ENV = "MLFLOW_TRACKING_URI"
MODEL_ENV = "MLFLOW_REGISTERED_MODEL"
DEFAULT_MODEL = "recsys_dist"
CURRENT_ALIAS = "current"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "recsys_dist"
KIND_TAG = "recsys_dist.kind"
RUN_TAG = "recsys_dist.run"  # a training run's directory
MODEL_DIR_TAG = "recsys_dist.model_dir"  # its export
REGISTRY_PATH_TAG = "recsys_dist.registry_path"  # a model version's directory in our registry
EPOCH = "epoch"  # the metric (and report key) a training run's steps are
SQLITE = "sqlite:///"  # then a path, relative to the working directory unless it starts with /
# Named, not imported: a leaf imports no stage, and the registry that calls log_version must
# not load torch unless MLflow is on.
PYFUNC_MODULE = "recsys_dist.inference.pyfunc"

F = TypeVar("F", bound=Callable[..., Any])


def enabled() -> bool:
    return bool(os.environ.get(URI_ENV))


def portable_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` as another process, in a directory of its own (Ray Train's
    controller), must read it: a SQLite database by its absolute path. ``None`` when tracking
    is off, or when the URI carries a password, which is never copied anywhere (that process
    then reads its own environment)."""
    uri = os.environ.get(URI_ENV)
    if not uri or urlsplit(uri).password:
        return None
    path = uri.removeprefix(SQLITE)
    if uri.startswith(SQLITE) and not path.startswith("/") and path != ":memory:":
        return SQLITE + os.path.abspath(path)
    return uri


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
def training_experiment() -> str | None:
    """The id of the experiment a training logs to, created now if new. Called by the driver:
    a store whose artifacts default to a local folder (SQLite's ``./mlruns``) puts a new
    experiment's under the creating process's directory, which must not be Ray Train's
    controller's (a Ray session directory, deleted with it)."""
    return _experiment().experiment_id


@best_effort
def start_training(run_dir: str, experiment_id: str | None = None) -> str | None:
    """The MLflow run of the training in ``run_dir`` (called at its first report): the one
    ``RUN/mlflow_run.json`` names, running again (a resumed training), else a new one in
    ``experiment_id`` (default: ``MLFLOW_EXPERIMENT_NAME``'s), recorded there for
    :func:`log_training`; its id."""
    client = _mlflow().MlflowClient()
    run_id = _recorded_run(client, run_dir)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment_id = experiment_id or _experiment().experiment_id
    tags = {KIND_TAG: "train", RUN_TAG: run_dir}
    run = client.create_run(experiment_id, run_name=_run_name(run_dir), tags=tags)
    storage.write_json(run_layout.tracking_file(run_dir), {"run_id": run.info.run_id})
    return run.info.run_id


@best_effort
def log_report(run_id: str, metrics: Mapping[str, Any]) -> None:
    """One Ray Train report's numbers, as it arrives, at step = its epoch."""
    mlflow = _mlflow()
    from mlflow.entities import Metric

    now, step = int(time.time() * 1000), int(metrics[EPOCH])
    values = [Metric(k, v, now, step) for k, v in _numbers(metrics).items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=values)


@best_effort
def log_training(run_dir: str) -> str | None:
    """Finish a run's MLflow run (started by :func:`start_training`, or new when no report
    was tracked): its settings, its export's path, the validations not yet logged; its id."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run_id = _recorded_run(client, run_dir)
    if run_id is None:
        started = _start("train", run_name=_run_name(run_dir), tags={RUN_TAG: run_dir})
    else:
        started = mlflow.start_run(run_id=run_id)
    with started as run:
        _log_new_params(run, _flatten(run_layout.read_settings(run_dir)))
        mlflow.set_tag(MODEL_DIR_TAG, run_layout.model_dir(run_dir))
        logged = {m.step for m in client.get_metric_history(run.info.run_id, EPOCH)}
        for line in run_layout.read_metrics(run_dir):
            if int(line[EPOCH]) not in logged:
                mlflow.log_metrics(_numbers(line), step=int(line[EPOCH]))
        return run.info.run_id


def _log_new_params(run, params: Mapping[str, Any]) -> None:
    """Params the run has not logged yet: MLflow never changes one, so a training resumed
    with other settings keeps its first values (and says so)."""
    logged = run.data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
    if changed:
        log.warning("MLflow run %s keeps its first %s", run.info.run_id, ", ".join(changed))
    _mlflow().log_params({k: v for k, v in params.items() if k not in logged})


def _recorded_run(client, run_dir: str) -> str | None:
    """The run ``RUN/mlflow_run.json`` names, if this store has it (not deleted)."""
    path = run_layout.tracking_file(run_dir)
    if not storage.is_file(path):
        return None
    run_id = storage.read_json(path)["run_id"]
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - another store, or the run was purged: start anew
        log.warning("MLflow has no run %s (%s): starting a new one", run_id, path)
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


def _run_name(run_dir: str) -> str:
    return run_dir.rstrip("/").rsplit("/", 1)[-1]


@best_effort
def log_version(record: Mapping[str, Any], path: str) -> str | None:
    """Log a registered version's record (``version.json``: lineage as tags, metrics) and
    its export ``path/model`` as a pyfunc model, and add that to MLflow's Model Registry;
    the MLflow run id."""
    data, code = record.get("data") or {}, record.get("code") or {}
    tags = {
        "recsys_dist.version": record["version"],
        "recsys_dist.parent": record.get("parent") or "",
        "recsys_dist.source_run": record.get("source_run") or "",
        "recsys_dist.data_hash": data.get("data_hash") or "",
        "recsys_dist.git_sha": code.get("git_sha") or "",
        REGISTRY_PATH_TAG: path,
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
        pyfunc = importlib.import_module(PYFUNC_MODULE)
        model = pyfunc.log_model(run_layout.model_dir(path))
        run_id = mlflow.active_run().info.run_id
    client, name = _registered_model()
    client.create_model_version(
        name,
        source=model.model_uri,
        run_id=run_id,
        tags={k: v for k, v in tags.items() if v},
        model_id=model.model_id,
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
    mlflow = _mlflow()
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
    _experiment()
    return _mlflow().start_run(run_name=run_name, tags={KIND_TAG: kind, **tags})


def _experiment():
    """``MLFLOW_EXPERIMENT_NAME`` (default ``recsys_dist``), created on first use."""
    return _mlflow().set_experiment(os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)


def _mlflow():
    """The ``mlflow`` module, imported only when tracking is on."""
    try:
        import mlflow
    except ImportError as error:
        raise ImportError(
            f"{URI_ENV} is set but MLflow is not installed: pip install 'recsys-dist[tracking]'"
        ) from error
    return mlflow


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
