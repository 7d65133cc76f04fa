"""The trainer builder beside the loop: datasets, scaling, checkpoints, and the export.

``train`` is what the CLI and the job entrypoint call: it runs a Ray Train ``TorchTrainer``
and exports the checkpoint with the best validation NDCG@10 to ``RUN/model`` (the run
directory's layout: :mod:`recsys_dist.run_layout`). The run directory may be local or
``s3://``: Ray Train persists checkpoints through the same pyarrow filesystem that
:mod:`recsys_dist.storage` resolves, so a rerun anywhere resumes from them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer
from transformers import CONFIG_NAME

from recsys_dist import checkpoint, run_layout, schema, storage, tracking
from recsys_dist.config import (
    Config,
    ConfigError,
    DataConfig,
    check_prepared_with,
    config_json,
    load_config,
)
from recsys_dist.data.catalogue import catalogue_dir
from recsys_dist.data.item_text import item_texts, trained_items
from recsys_dist.data.prepared import load_manifest, rating_scale, read_split
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import (
    MissingInputError,
    OutputExistsError,
    RunFailed,
    UserInputError,
    find_user_error,
)
from recsys_dist.model import Bert4Rec, Bert4RecConfig
from recsys_dist.model.text_encoder import encode_texts_cached
from recsys_dist.model.warm_start import check_fits
from recsys_dist.train.data_config import CoveringDataConfig
from recsys_dist.train.loop import SELECTION_METRIC, train_loop_per_worker
from recsys_dist.train.tracking_callback import TrackMetrics

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    run_dir: str
    model_dir: str
    best_metrics: dict[str, Any]
    best_epoch: int
    epochs: int
    train_seconds: float
    workers: int


def dataset_config(
    prepared_dir: str, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config:
    """The config to train on ``prepared_dir`` with: the ``data`` settings it was prepared
    with (its manifest's), then the YAML ``path`` (or preset) and ``overrides`` on top.

    What ``train`` and ``retrain`` resolve, and what a library caller of :func:`train`
    should build its config with: a data setting is fixed when the data is prepared, so
    one that the file or an override gives and that disagrees with the dataset's is
    refused, in one line naming it (:func:`check_prepared_with`).
    """
    prepared = prepared_settings(load_manifest(prepared_dir))
    config = load_config(path, overrides, base={"data": prepared})
    check_prepared_with(config.data, prepared, prepared_dir)
    return config


def prepared_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` settings a dataset was prepared with, those this version knows (a newer
    one's extra settings are its own; a manifest that records none fixes none)."""
    known = {field.name for field in dataclasses.fields(DataConfig)}
    return {k: v for k, v in (manifest.get("config") or {}).items() if k in known}


def build_trainer(prepared_dir: str, run_dir: str, config: Config) -> TorchTrainer:
    """A ``TorchTrainer`` over the prepared dataset; the loop gets everything via its config."""
    manifest = load_manifest(prepared_dir)
    # The loop pads and sizes the model with data.max_len: the windows' own, never another.
    check_prepared_with(config.data, prepared_settings(manifest), prepared_dir)
    prepared_dir = storage.absolute(prepared_dir)  # workers run in their own directories
    # Per-epoch progress bars from every worker would bury the training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = _datasets(prepared_dir, config)
    train_rows = manifest["counts"]["train_rows"]
    if config.train.active_since:  # a fine-tuning turn's share of them: counted
        train_rows = datasets[schema.TRAIN_SPLIT].count()
    workers = config.train.workers
    if train_rows // workers == 0:
        raise ConfigError(  # a user error: fewer --workers, or more data
            f"{prepared_dir}: {train_rows} training rows "
            f"cannot feed {workers} workers (--workers / train.workers)"
        )
    loop_config = {
        # Secrets redacted: the loop needs none, and writes this into every checkpoint's state.
        "config": config.public_dict(),
        "vocab_size": manifest["vocab_size"],
        "ratings": rating_scale(manifest),  # None: no rating head
        "vocab_path": storage.join(prepared_dir, schema.VOCAB_FILE),
        "items_dir": catalogue_dir(prepared_dir),  # a warm start's category peers
        "item_text": _item_text(prepared_dir, config),  # None without model.item_text
        "data_hash": manifest["data_hash"],
        "run_dir": storage.absolute(run_dir),
        "steps_per_epoch": _steps_per_epoch(train_rows, config.train),
    }
    results_fs, results_path = storage.resolve(run_layout.ray_results_dir(run_dir))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
            placement_strategy=config.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_layout.TRAIN_EXPERIMENT,
            storage_path=results_path,
            storage_filesystem=results_fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=SELECTION_METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            # ... but a user error fails the run at once; each validation reaches MLflow as
            # it is reported (with MLFLOW_TRACKING_URI set).
            callbacks=[FailOnUserError(), TrackMetrics(run_dir)],
            # Ray Train's own lines (worker group, checkpoints, reports) in its controller and
            # workers follow the driver's `ray.train` logger: quiet unless `recsys-dist -v`.
            logging_config=ray.train.LoggingConfig(
                log_level=logging.getLevelName(logging.getLogger("ray.train").getEffectiveLevel())
            ),
        ),
        datasets=datasets,
        # Training data is sharded without dropping rows (shards may differ by a batch);
        # every worker sees all validation rows and scores the users hashed to it.
        dataset_config=CoveringDataConfig(
            [schema.TRAIN_SPLIT], config.train.batch_size, config.train.preserve_order
        ),
    )


class FailOnUserError(ray.train.UserCallback):
    """Fail the run at once when a worker raised a user error (conventions habit 20).

    Ray Train restarts the workers after any worker failure, up to ``train.max_failures``:
    right for a lost node, wrong for a bad shape at warm start or a bad setting, which fail
    the same way on every attempt, only later, and use up the retries a real loss needs.
    Ray Train calls this on its controller after each poll that found worker errors; an
    exception raised here becomes a ``ray.train.ControllerError``, which its default failure
    policy does not retry, and :func:`train` raises the user's own error from it. Any other
    worker error goes on to the failure policy as before.
    """

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for rank in sorted(worker_exceptions):
            error = find_user_error(worker_exceptions[rank])
            if error is not None:
                raise error


def _item_text(prepared_dir: str, config: Config) -> ray.ObjectRef | None:
    """With ``model.item_text``: the vocabulary's text embedding matrix and the items some
    training window holds, computed once here (on a GPU if the driver has one) and handed to
    every worker through the object store; ``None`` otherwise.

    Raises:
        MissingInputError: If the dataset has no catalogue with titles or categories.
    """
    if not config.model.item_text:
        return None
    vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
    texts = item_texts(vocab, catalogue_dir(prepared_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = storage.join(prepared_dir, schema.ITEM_TEXT_CACHE_FILE)
    matrix = encode_texts_cached(texts, cache, device=device)  # [V, D]
    return ray.put({"matrix": matrix, "trained": trained_items(prepared_dir, vocab.size)})


def _datasets(prepared_dir: str, config: Config) -> dict[str, ray.data.Dataset]:
    """The training rows (a fine-tuning turn's users only, with ``train.active_since``) and
    the validation rows (the newest window's only, with ``eval.targets_after``)."""
    return {
        schema.TRAIN_SPLIT: read_split(
            prepared_dir,
            schema.TRAIN_SPLIT,
            active_since=config.train.active_since,
            replay=config.train.replay_share,
        ),
        schema.VALID_SPLIT: read_split(prepared_dir, schema.VALID_SPLIT, config.eval.targets_after),
    }


def _steps_per_epoch(rows: int, train_config) -> int:
    """Steps every rank takes per epoch (ranks step in lock-step): the largest shard's.

    Shards are balanced to within one batch-sized block, so the largest may hold one batch
    more than an even share; the learning-rate schedule must not end before training does.
    """
    largest = math.ceil(rows / train_config.workers)
    if train_config.workers > 1:
        largest += train_config.batch_size
    return math.ceil(largest / train_config.batch_size)


def train(prepared_dir: str, run_dir: str, config: Config, overwrite: bool = False) -> TrainSummary:
    """Train, then export the best checkpoint (by validation NDCG@10) to ``RUN/model``.

    ``config.data`` must be the settings ``prepared_dir`` was prepared with (build the
    config with :func:`dataset_config`): the windows were cut with them. A rerun into the
    same ``run_dir`` resumes from its latest checkpoint, which is only right for the same
    data and model: other ones are refused (``overwrite`` starts afresh).

    Raises:
        UserInputError: Bad input, before anything is written where it can be told (the
            data settings, ``train.init_from``), or as soon as a worker raised it: such
            an error is not retried (:class:`FailOnUserError`).
        RunFailed: Workers failed more often than ``train.max_failures`` allows.
    """
    init_from = config.train.init_from
    if init_from and not storage.exists(storage.join(init_from, checkpoint.STATE_FILE)):
        raise MissingInputError(f"train.init_from: no exported model in {init_from}")
    if overwrite and storage.exists(run_dir):
        check_overwrite(run_dir, prepared_dir)
    check_config(prepared_dir, config)  # before --overwrite deletes anything
    if overwrite and storage.exists(run_dir):
        storage.delete_dir(run_dir)
    start_run(prepared_dir, run_dir, config)
    logger.debug("config: %s", config_json(config))  # saved in full as RUN/config.yaml
    _warn_if_no_cpu_for_data(config)
    started = time.perf_counter()
    try:
        result = build_trainer(prepared_dir, run_dir, config).fit()
    except ray.train.TrainingFailedError as error:
        user = _user_error(error)
        if user is not None:
            logger.debug("a worker raised a user error; the run stops", exc_info=error)
            raise user from None  # the worker's own message: one line at the CLI
        raise _failed(error, run_dir, config) from _first_worker_error(error)
    seconds = time.perf_counter() - started
    best = result.get_best_checkpoint(SELECTION_METRIC, "max")
    if best is None:
        raise RuntimeError(f"training in {run_dir} reported no checkpoint")
    model_dir = run_layout.model_dir(run_dir)
    with best.as_directory() as directory:  # a local copy when the run lives on S3
        checkpoint.export(directory, model_dir)
    state = storage.read_json(storage.join(model_dir, checkpoint.STATE_FILE))
    tracking.log_training(run_dir)
    return TrainSummary(
        run_dir=run_dir,
        model_dir=model_dir,
        best_metrics=state["metrics"],
        best_epoch=state["metrics"]["epoch"],
        epochs=run_layout.read_metrics(run_dir)[-1]["epoch"],
        train_seconds=round(seconds, 2),
        workers=config.train.workers,
    )


def check_config(prepared_dir: str, config: Config) -> None:
    """Refuse, before Ray Train starts, a config that cannot train on ``prepared_dir``: data
    settings other than the dataset's, or a ``train.init_from`` export of another shape.

    Raises:
        ConfigError: A data setting differs from the dataset's.
        UserInputError: The warm start's parent does not fit the model.
    """
    manifest = load_manifest(prepared_dir)
    check_prepared_with(config.data, prepared_settings(manifest), prepared_dir)
    if config.train.init_from:
        _check_warm_start(config, manifest)


def _check_warm_start(config: Config, manifest: dict[str, Any]) -> None:
    """The warm start's own check (:func:`check_fits`) on the driver, on the shapes of both
    models built on the ``meta`` device (nothing allocated, no weights read)."""
    init_from = config.train.init_from
    parent = Bert4RecConfig.from_dict(storage.read_json(storage.join(init_from, CONFIG_NAME)))
    if parent.max_len != config.data.max_len:
        raise UserInputError(
            f"train.init_from {init_from}: its model reads {parent.max_len} events (max_len), "
            f"this data was prepared at data.max_len={config.data.max_len}; a warm start needs "
            "the same: start from a model trained on such data, or train from scratch"
        )
    own = Bert4RecConfig.from_model_config(
        config.model,
        manifest["vocab_size"],
        config.data.max_len,
        rating_scale(manifest),
        # The text matrix's width is known once the texts are encoded (build_trainer); the
        # worker checks it. A parent without text takes the projection of any width.
        item_text_dim=parent.item_text_dim or 1,
    )
    try:
        check_fits(_meta_shapes(own), _meta_shapes(parent))
    except UserInputError as error:
        raise UserInputError(f"train.init_from {init_from}: {error}") from None


def _meta_shapes(model_config: Bert4RecConfig) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a model of ``model_config``, built without memory."""
    with torch.device("meta"):
        state = Bert4Rec(model_config).state_dict()
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _user_error(error: ray.train.TrainingFailedError) -> UserInputError | None:
    """The user error a run stopped on (:class:`FailOnUserError` raised it on the
    controller, which Ray Train reports as a ``ControllerError``); None otherwise."""
    if isinstance(error, ray.train.ControllerError):
        return find_user_error(error.controller_failure)
    return None


def _failed(error: ray.train.TrainingFailedError, run_dir: str, config: Config) -> RunFailed:
    """What to tell a user whose run failed more often than it may recover from."""
    cause = _first_worker_error(error) or error
    reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    logger.debug("training failed", exc_info=error)
    return RunFailed(
        f"training failed more often than train.max_failures={config.train.max_failures} "
        f"allows ({type(cause).__name__}: {reason[:200]}); {run_dir}: {checkpoints_kept(run_dir)}"
    )


def checkpoints_kept(run_dir: str, rerun: str = "the same command") -> str:
    """What a run that stopped before its end (failed, or interrupted) keeps, and how to go
    on: ``rerun`` resumes from the latest checkpoint the run registered, which Ray Train
    restores for a run of the same name and storage path. Read back with Ray Train's own
    ``Result.from_path``: metrics.jsonl is written just before a checkpoint is reported, and
    its registration comes later, so that file may be a validation or more ahead of it."""
    path = storage.join(run_layout.ray_results_dir(run_dir), run_layout.TRAIN_EXPERIMENT)
    filesystem, experiment = storage.resolve(storage.absolute(path))
    try:
        result = ray.train.Result.from_path(experiment, storage_filesystem=filesystem)
    except RuntimeError:  # no experiment yet, or none of its checkpoints registered
        result = None
    if result is None or result.checkpoint is None:
        return "no checkpoint was kept: a rerun starts afresh"
    epoch = (result.metrics or {}).get("epoch")
    latest = f"latest: epoch {epoch}" if epoch is not None else f"latest: {result.checkpoint.path}"
    return f"its checkpoints are kept ({latest}): rerun {rerun} to resume from it"


def _first_worker_error(error: ray.train.TrainingFailedError) -> BaseException | None:
    """A worker's own exception (a user error raised in the loop is reported as such)."""
    failures = getattr(error, "worker_failures", None) or {}
    return next(iter(failures.values()), None)


def start_run(prepared_dir: str, run_dir: str, config: Config) -> None:
    """Make ``run_dir`` a run of ``prepared_dir`` with ``config`` (its ``config.yaml`` and
    ``run.json``), refusing one that holds a run of other data, split or model shape."""
    identity = _run_identity(prepared_dir, config)
    _check_resumable(run_dir, identity)
    storage.make_dirs(run_dir)
    config.save(run_layout.config_file(run_dir))
    run_layout.write_run_record(run_dir, prepared_dir, identity)


def check_overwrite(run_dir: str, prepared_dir: str, files: Sequence[str] | None = None) -> None:
    """Refuse an ``overwrite`` that would delete more than a run, before anything is deleted.

    ``overwrite`` deletes ``run_dir`` whole, so it must be a run (or empty) and must neither
    be, hold nor lie in the prepared data, nor hold an event log's Parquet. A model registry
    and the service's write-ahead log are defined by later stages, which this one may not
    import: the CLI checks those before calling this (``cli._refuse_to_overwrite``), and a
    folder holding only them is refused here anyway, as not a run.

    Args:
        run_dir: The output ``overwrite`` would delete (it exists).
        prepared_dir: The prepared data the run is to be trained on.
        files: A run's listing (``storage.list_files(run_dir, "")``) when the caller has
            it, so one listing serves every check; listed here otherwise. Only a run is
            listed whole (it holds tens of files); anything else is refused as soon as its
            top level shows a file, so a mistaken ``--output`` at the top of a large tree or
            bucket is not walked (only one whose top level holds folders alone is).
    """
    _refuse_to_delete_events(run_dir)  # the legacy layout, with its own advice
    _refuse_to_delete_data(run_dir, prepared_dir)
    if not run_layout.is_run(run_dir):
        if storage.list_files(run_dir, "", recursive=False) or not storage.is_empty_dir(run_dir):
            raise OutputExistsError(
                f"--overwrite would delete {run_dir}, which is not a run (no "
                f"{run_layout.RUN_RECORD}) but holds other files; --overwrite only replaces a "
                "run: choose another --output"
            )
        return
    files = storage.list_files(run_dir, "") if files is None else files
    events = [
        f for f in files if f.endswith(".parquet") and schema.EVENTS_DIR in _parts(f, run_dir)
    ]
    if events:
        raise OutputExistsError(
            f"--overwrite would delete {run_dir}, which holds an event log ({events[0]}, "
            f"{len(events)} Parquet files under {schema.EVENTS_DIR}/); move it out first"
        )


def _refuse_to_delete_data(run_dir: str, prepared_dir: str) -> None:
    """The data is never deleted with a run, nor trained into: compared as normalised absolute
    paths (local paths resolved, URIs as given), so no listing is needed."""
    output, data = (storage.absolute(p).rstrip("/") for p in (run_dir, prepared_dir))
    if output == data or data.startswith(output + "/"):
        where = "is" if output == data else "holds"
        raise OutputExistsError(
            f"--overwrite would delete {run_dir}, which {where} the prepared data {prepared_dir}; "
            "choose an --output outside the data"
        )
    if output.startswith(data + "/"):
        raise OutputExistsError(
            f"--output {run_dir} lies inside the prepared data {prepared_dir}; choose an "
            "--output outside the data"
        )


def _parts(path: str, root: str) -> list[str]:
    """The folders and name of ``path`` below ``root`` (a listing of ``root`` gives it whole):
    only names inside the output say what it holds."""
    return path.removeprefix(storage.absolute(root).rstrip("/") + "/").split("/")


def _refuse_to_delete_events(run_dir: str) -> None:
    """``--overwrite`` deletes the run; the service's acknowledged events must never go with
    it. Their default log is beside the run now; services before that wrote it inside."""
    log_dir = storage.join(run_dir, run_layout.EVENT_LOG_DIR)
    if storage.is_dir(log_dir) and storage.list_files(log_dir, ".parquet"):
        raise OutputExistsError(
            f"--overwrite would delete the served events in {log_dir}; move them out first "
            "(e.g. to the event log root: serve.event_log_dir) and prepare them with --append"
        )


def _run_identity(prepared_dir: str, config: Config) -> dict[str, Any]:
    """What a checkpoint is only valid for: the input, how it was split, the model's shape."""
    manifest = load_manifest(prepared_dir)
    return {
        "data_hash": manifest["data_hash"],
        run_layout.DATA_SETTINGS: manifest["config"],
        "model_config": config.to_dict()["model"],
    }


def _check_resumable(run_dir: str, identity: dict[str, Any]) -> None:
    """Refuse to resume a run that was trained on other data, another split or model shape
    (Ray Train would silently restore its checkpoint into this one)."""
    if not run_layout.is_run(run_dir):
        return
    before = run_layout.run_record(run_dir)
    changed = [key for key in identity if key in before and before[key] != identity[key]]
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run of other {' and '.join(changed)}; a rerun would resume "
            "it. Train into a new --output, or pass --overwrite to start afresh."
        )


def _warn_if_no_cpu_for_data(config: Config) -> None:
    """Ray Data needs a CPU beside the training workers, or reading the shards waits forever."""
    needed = config.train.workers * config.train.cpus_per_worker + 1
    available = ray.cluster_resources().get("CPU", 0)
    if available < needed:
        logger.warning(
            "the cluster has %s CPUs; %d workers x %s CPUs plus 1 for Ray Data need %s. "
            "Training will wait unless the cluster scales up.",
            available,
            config.train.workers,
            config.train.cpus_per_worker,
            needed,
        )
