"""``train``: BERT4Rec on a prepared dataset with Ray Train + DeepSpeed, into a run directory.

A rerun of the same command resumes the run from its latest checkpoint (Ray Train restores
a run of the same name and storage path), after a failure or a Ctrl-C alike; ``--overwrite``
starts afresh.
"""

from __future__ import annotations

import argparse
from typing import Any

from recsys_dist import storage
from recsys_dist.cli import common
from recsys_dist.cli.command import Command, done
from recsys_dist.errors import OutputExistsError


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data", required=True, help="a prepared dataset")
    sub.add_argument("--output", required=True, help="the run directory")
    common.add(sub, "--workers")
    common.add(sub, "--gpu")
    common.add(sub, "--overwrite")
    common.add_config_args(sub)


def _run(args: argparse.Namespace):
    common.check_prepared(args.data)
    from recsys_dist.train.trainer import dataset_config, train  # DeepSpeed: seconds to import

    flags = {"train.workers": args.workers, "train.use_gpu": True if args.gpu else None}
    # data.* is the dataset's own (its manifest): --config and overrides set the rest, and
    # one of theirs that disagrees with the data is refused.
    overrides = [*args.overrides, *common.flag_overrides(flags)]
    config = dataset_config(args.data, common.config_path(args.config), overrides)
    if args.overwrite:
        _refuse_to_overwrite(args.output, args.data)  # before Ray starts
    cpus = int(config.train.workers * config.train.cpus_per_worker) + 2
    common.init_ray(args.address, min_cpus=cpus)
    try:
        return train(args.data, args.output, config, overwrite=args.overwrite)
    except SystemExit as stop:
        # Ray Train's own Ctrl-C handler aborts the run's workers, then exits the process;
        # it is an interruption like any other here (_interrupted says what is kept).
        raise KeyboardInterrupt from stop


def _interrupted(args: argparse.Namespace) -> str:
    """Ctrl-C: the run keeps the checkpoints it reported; the same command resumes it."""
    from recsys_dist.train.trainer import checkpoints_kept

    rerun = "the same command without --overwrite" if args.overwrite else "the same command"
    try:
        kept = checkpoints_kept(args.output, rerun)
    except Exception:  # noqa: BLE001 - the storage is what failed: say what is sure
        kept = f"the checkpoints it reported are kept: rerun {rerun} to resume from the latest"
    return f"interrupted: training into {args.output} stopped; {kept}"


def _refuse_to_overwrite(output: str, data: str) -> None:
    """``train --overwrite`` deletes ``--output``, which must hold a run and nothing more. A
    model registry and the service's write-ahead log are defined by stages after training
    (which the trainer may not import), so they are checked here, then the trainer's own
    rules, on one listing: all of a run (tens of files), only the top of anything else (which
    is refused either way: no walk of a large tree just to name what it holds)."""
    from recsys_dist import run_layout
    from recsys_dist.registry import registry_files
    from recsys_dist.serving.event_log import LOCK_FILE, WAL_SUFFIX
    from recsys_dist.train.trainer import check_overwrite

    if not storage.exists(output):
        return
    files = storage.list_files(output, "", recursive=run_layout.is_run(output))
    held = registry_files(files)
    what = "a model registry"
    if not held:
        held = [f for f in files if f.endswith(WAL_SUFFIX) or f.rsplit("/", 1)[-1] == LOCK_FILE]
        what = "an event log's write-ahead log"
    if held:
        raise OutputExistsError(
            f"--overwrite would delete {output}, which holds {what} ({held[0]}); "
            "choose another --output, or move it out first"
        )
    check_overwrite(output, data, files)


def _summary(r: dict, args: Any, seconds: float) -> list[str]:
    from recsys_dist.train.loop import SELECTION_METRIC

    best = r["best_metrics"].get(SELECTION_METRIC)
    best_text = "n/a" if best is None else f"{best:.4f}"
    return done(
        f"trained {r['epochs']} epoch(s) on {r['workers']} worker(s) in "
        f"{r['train_seconds']:.1f} s; best {SELECTION_METRIC} {best_text} "
        f"at epoch {r['best_epoch']}",
        f"run:    {r['run_dir']}",
        f"model:  {r['model_dir']}",
        then=f"evaluate --run {r['run_dir']}",
    )


COMMANDS = (
    Command(
        "train",
        "train BERT4Rec with Ray Train + DeepSpeed",
        _run,
        _summary,
        _arguments,
        starts_ray=True,
        description=__doc__,
        interrupted=_interrupted,
    ),
)
