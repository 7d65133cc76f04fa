"""Training metrics in MLflow as they happen: a Ray Train callback (on when
``MLFLOW_TRACKING_URI`` is set in the driver that builds it, or where Ray Train's controller
runs).

Wired in the trainer's ``RunConfig(callbacks=[TrackMetrics(run_dir)])``, built in the driver,
which makes sure the experiment exists. Ray Train calls :meth:`TrackMetrics.after_report` on
its controller once all workers have reported an epoch (``ray.train.report``); the first call
starts the run's MLflow run and every call logs that report's numbers at step = epoch. Ray
Train has no public "training ended" hook for a callback: the driver's
``tracking.log_training`` finishes the same run once the export is written. What MLflow does
is ``tracking.py``'s, best effort: a store that is down is a warning, never a failed training.
"""

from __future__ import annotations

import os
from typing import Any

import ray.train

from recsys_dist import storage, tracking


class TrackMetrics(ray.train.UserCallback):
    """Log each Ray Train report's metrics to the MLflow run of ``run_dir``, live.

    Args:
        run_dir: The run directory (local or ``s3://``); its ``mlflow_run.json`` tells the
            driver's ``tracking.log_training`` which MLflow run to finish.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = storage.absolute(run_dir)  # the controller runs elsewhere
        # The driver's store and experiment, decided here: the controller's environment may
        # lack them (a Ray started before they were set), and a new experiment's artifacts
        # must not go under the controller's (temporary) working directory.
        self.tracking_uri = tracking.portable_uri()  # None: off, or only the controller's
        self.experiment_id = tracking.training_experiment()
        self.mlflow_run_id: str | None = None

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: ray.train.Checkpoint | None,
    ) -> None:
        """Every rank reports the same validation (``metrics[0]`` is rank 0's)."""
        if not metrics or tracking.EPOCH not in metrics[0]:
            return
        if self.tracking_uri:  # the controller is Ray Train's process for this training
            os.environ[tracking.URI_ENV] = self.tracking_uri
        if not tracking.enabled():
            return
        if self.mlflow_run_id is None:
            self.mlflow_run_id = tracking.start_training(self.run_dir, self.experiment_id)
        if self.mlflow_run_id is not None:
            tracking.log_report(self.mlflow_run_id, metrics[0])
