"""The run directory: every name in it, in one place (``train`` writes it, the rest read it).

    RUN/run.json           what the run is: the prepared dataset it trained on, and what its
                           checkpoints are valid for (data hash, split settings, model shape);
                           written first, so its presence is what makes a directory a run
    RUN/config.yaml        the resolved config the run was trained with; ``evaluate``,
                           ``recommend`` and ``score`` start from its settings
    RUN/metrics.jsonl      one JSON line per validation (rank 0 rewrites it at every report)
    RUN/ray_results/train/ Ray Train's experiment: checkpoints (the two best by validation
                           NDCG@10) and the snapshot a rerun resumes from
    RUN/model/             the export of the best checkpoint (its layout: ``checkpoint.py``)
    RUN/interests.json     the interest forecast's fitted calibration and its evaluation
                           (``recsys-dist interests --evaluate``)
    RUN/mlflow_run.json    the run's MLflow run id, with MLFLOW_TRACKING_URI set
                           (``tracking.py``): a resumed training logs into the same run

Beside the run, never inside it (``train --overwrite`` deletes the run):

    RUN/../event_log/      the online service's default event log (``events/part-*.parquet``),
                           shared by the runs of one directory: it belongs to the service, and
                           outlives every model it served

``RUN`` may be local or ``s3://``. Callers use the path helpers below, never the bare names,
so a rename is one edit here (the directory tree above is the contract docs and tests cite).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from recsys_dist import storage
from recsys_dist.errors import MissingInputError

RUN_RECORD = "run.json"  # what the run is; marks a directory as a run
CONFIG_FILE = "config.yaml"  # the resolved config (``Config.save``)
METRICS_FILE = "metrics.jsonl"  # one line per validation
RAY_RESULTS_DIR = "ray_results"  # Ray Train's storage path ...
TRAIN_EXPERIMENT = "train"  # ... and the experiment inside it (``RunConfig(name=...)``)
MODEL_DIR = "model"  # the exported best checkpoint
INTERESTS_FILE = "interests.json"  # the forecast's calibration and evaluation
TRACKING_FILE = "mlflow_run.json"  # the MLflow run id (tracking.py)
EVENT_LOG_DIR = "event_log"  # the online service's default event log, beside the run

PREPARED = "prepared"  # run.json key: absolute path of the prepared dataset
DATA_SETTINGS = "data_config"  # run.json key: the ``data`` settings it was prepared with


def config_file(run: str | Path) -> str:
    return storage.join(run, CONFIG_FILE)


def metrics_file(run: str | Path) -> str:
    return storage.join(run, METRICS_FILE)


def ray_results_dir(run: str | Path) -> str:
    return storage.join(run, RAY_RESULTS_DIR)


def model_dir(run: str | Path) -> str:
    return storage.join(run, MODEL_DIR)


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The run's validation lines (``metrics.jsonl``), oldest first; none before the first."""
    path = metrics_file(run)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def read_settings(run: str | Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a plain mapping (section -> key -> value)."""
    return _yaml_mapping(config_file(run))


def interests_file(run: str | Path) -> str:
    return storage.join(run, INTERESTS_FILE)


def tracking_file(run: str | Path) -> str:
    return storage.join(run, TRACKING_FILE)


def event_log_dir(run: str | Path) -> str:
    """The default event log of a service of ``run``: beside it, so no training command
    that replaces the run can delete acknowledged events."""
    return storage.join(storage.parent(storage.absolute(run)), EVENT_LOG_DIR)


def is_run(run: str | Path) -> bool:
    """Whether ``run`` holds a run (its ``run.json``)."""
    return storage.exists(storage.join(run, RUN_RECORD))


def write_run_record(run: str | Path, prepared_dir: str, identity: dict[str, Any]) -> None:
    """Record the prepared dataset (as an absolute path) and what the run is valid for."""
    record = {PREPARED: storage.absolute(prepared_dir), **identity}
    storage.write_json(storage.join(run, RUN_RECORD), record)


def run_record(run: str | Path) -> dict[str, Any]:
    """``RUN/run.json``; a directory without one is a user error, not a crash."""
    if not is_run(run):
        raise MissingInputError(
            f"{run}: not a run directory (no {RUN_RECORD}); train one with recsys-dist train"
        )
    return storage.read_json(storage.join(run, RUN_RECORD))


def prepared_dir_of(run: str | Path) -> str:
    """The prepared dataset a run was trained on."""
    return run_record(run)[PREPARED]


def saved_settings(
    run: str | Path, sections: Sequence[str], unless_in: str | Path | None = None
) -> list[str]:
    """The run's settings of ``sections`` as ``section.key=value`` overrides.

    Commands that use a trained run start from the settings it was trained with: its
    ``config.yaml``, except ``data``, which comes from ``run.json``: the settings its prepared
    dataset was cut with (``max_history``, ``dedup``, ...), what training really saw (the
    config's own ``data`` section only gave the model its ``max_len``). Keys that the YAML
    file ``unless_in`` (a ``--config`` the user gave) sets are left out, so an explicit file,
    and the overrides and flags applied after these, win.
    """
    record = run_record(run)
    saved = read_settings(run)
    if DATA_SETTINGS in record:
        saved["data"] = record[DATA_SETTINGS]
    given = _yaml_mapping(unless_in) if unless_in is not None else {}
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section in sections
        for key, value in (saved.get(section) or {}).items()
        if key not in (given.get(section) or {})
    ]


def _yaml_mapping(path: str | Path) -> dict[str, Any]:
    loaded = yaml.safe_load(storage.read_text(path)) or {}
    return loaded if isinstance(loaded, dict) else {}
