"""One turn of the retraining loop: new event files -> candidate -> gate -> registry.

    WORKDIR/prepared/        the loop's dataset: the current version's, copied once, then
                             appended to on every turn (its manifest's watermark takes each
                             event file once, however often the log folder is read)
    WORKDIR/runs/STAMP/      each turn's candidate run (warm-started from the current version)
    WORKDIR/drift/STAMP/     a drift-triggered turn's interests of the active users

A turn, as a cron line or a Kubernetes CronJob runs it unattended (``jobs/retrain.py``):

1. append the event files not taken before; none: stop, saying so (nothing is trained);
   with ``--when-drift SHARE``: measure the drift of the users active since the parent's data
   ended (``WORKDIR/drift/STAMP``); below SHARE, stop, saying so (the events stay taken: the
   next turn measures them again, with whatever came after);
2. train a candidate from the current version's weights (``train.init_from``), its item rows
   grown to the new items, for ``retrain.epochs`` with a fresh optimizer and schedule, at
   ``retrain.lr_scale`` times the parent's rate after ``retrain.warmup_steps``, on the
   users with events since the parent's data ended plus a ``retrain.replay`` share of the
   others;
3. the gate: rank the candidate and the current version on the same rows (the newest
   window: the test split's held-out events later than the current version's data, which
   neither trained on) with the same protocol; the current version cannot recommend items
   it never saw; a candidate that does not beat the most-popular list by
   ``retrain.min_lift`` on those rows is kept out too;
4. register the candidate (parent: the current version; the gate's metrics in its record);
   promote it unless its ``retrain.metric`` is below the current's by more than
   ``retrain.tolerance``, and say why either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_dist import run_layout, schema, storage, tracking
from recsys_dist.config import Config, DataConfig, EvalConfig, TrainConfig
from recsys_dist.data.prepare import prepare_dataset
from recsys_dist.data.prepared import load_manifest, read_split
from recsys_dist.errors import MissingInputError
from recsys_dist.evaluation.evaluate import evaluate_run
from recsys_dist.interests.offline import INTERESTS_PARQUET, analyse_users
from recsys_dist.registry import Registry, Version
from recsys_dist.train.trainer import check_config, dataset_config, train

log = logging.getLogger(__name__)

PREPARED_DIR = "prepared"
RUNS_DIR = "runs"
DRIFT_DIR = "drift"
# Taken from the parent; the turn's own `retrain` section is the command's (defaults, then
# overrides and flags), so a one-off --when-drift or gate setting never sticks to later turns.
# `data` is the loop dataset's own (its manifest's: the parent's, kept on every append).
SETTINGS = ("model", "train", "eval", "serve", "interests")


def default_workdir(registry: str) -> str:
    """Where a registry's retraining keeps its dataset and candidate runs: beside it."""
    return storage.join(storage.parent(storage.absolute(registry)), "retraining")


def retrain(
    registry_root: str,
    event_dirs: Sequence[str],
    workdir: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one turn; returns what happened (see the module docstring), JSON-ready.

    Args:
        registry_root: The registry whose current version is the parent.
        event_dirs: Event-log folders (the service's ``event_log/``, or import outputs).
        workdir: The loop's dataset and runs; default: :func:`default_workdir`.
        overrides: ``section.key=value`` on top of the parent's own settings.
    """
    registry = Registry(registry_root)
    current = parent_version(registry)
    workdir = storage.absolute(workdir or default_workdir(registry_root))
    prepared = _loop_dataset(current, workdir)
    # The candidate's config, checked before any event is taken: an override that disagrees
    # with the data, or a parent it cannot start from, would fail the same way every turn.
    parents = run_layout.saved_settings(current.path, SETTINGS)
    config = dataset_config(prepared, None, [*parents, *overrides])  # a data.* one must agree
    config = dataclasses.replace(config, train=fine_tuning(config, current))
    check_config(prepared, config)
    before = load_manifest(prepared)
    taken = _append(event_dirs, prepared, before)
    after = load_manifest(prepared)
    growth = {
        "new_files": taken,
        "new_items": after["num_items"] - before["num_items"],
        "events": after["counts"]["events"] - before["counts"]["events"],
    }
    if not taken:
        reason = "nothing new: every event file was taken before"
        log.info("%s; %s stays current", reason, current.id)
        return _result(None, current, False, reason, {}, {}, growth)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    if config.retrain.when_drift > 0:
        drift = measure_drift(current, prepared, storage.join(workdir, DRIFT_DIR, stamp), config)
        growth["drift"] = drift
        if drift["share"] < config.retrain.when_drift:
            reason = (
                f"too little drift: {drift['drifted_users']} of {drift['active_users']} users "
                f"active since the parent's data drifted (share {drift['share']:.4f} < "
                f"{config.retrain.when_drift})"
            )
            log.info("%s; %s stays current", reason, current.id)
            return _result(None, current, False, reason, {}, {}, growth)
    run_dir = storage.join(workdir, RUNS_DIR, stamp)
    train(prepared, run_dir, config)
    gate_eval, window = newest_window(current, prepared, config.eval)
    candidate_metrics = evaluate_run(run_dir, schema.TEST_SPLIT, gate_eval, prepared)
    current_metrics = evaluate_run(current.path, schema.TEST_SPLIT, gate_eval, prepared)
    promote, reason = gate(candidate_metrics, current_metrics, config.retrain)
    reason = f"{reason}; {window}"
    version = registry.register(
        run_dir,
        parent=current.id,
        metrics={"gate": {"candidate": candidate_metrics, "current": current_metrics}},
    )
    if promote:
        registry.promote(version.id)
    log.info("candidate %s %s: %s", version.id, "promoted" if promote else "kept out", reason)
    return _result(version.id, current, promote, reason, candidate_metrics, current_metrics, growth)


def fine_tuning(config: Config, parent: Version) -> TrainConfig:
    """The candidate's training: the parent's settings, from the parent's weights, for the
    ``retrain`` section's epochs, rate and warm-up, on the users active since the parent's
    data plus the ``retrain.replay`` share of the others."""
    turn = config.retrain
    return dataclasses.replace(
        config.train,
        init_from=parent.model_dir,
        epochs=turn.epochs,
        lr=config.train.lr * turn.lr_scale,
        warmup_steps=turn.warmup_steps,
        active_since=(data_end(parent) or 0) if turn.replay < 1 else 0,
        replay_share=turn.replay,
    )


def parent_version(registry: Registry) -> Version:
    """The current version, which a turn starts from; ``MissingInputError`` without one."""
    current = registry.current()
    if current is None:
        raise MissingInputError(
            f"{registry.root}: no current version to retrain from "
            "(recsys-dist models register, then models promote)"
        )
    return current


def data_end(version: Version) -> int | None:
    """The time of the last event a version's data held (None: unrecorded)."""
    span = version.record["data"]["event_time_range"]
    return span[1] if span else None


def newest_window(
    current: Version, prepared: str, eval_config: EvalConfig
) -> tuple[EvalConfig, str]:
    """The gate's protocol: only the held-out events after the current version's data, so
    the users the new events are about judge the turn, not everyone's stale last event.
    Every held-out event when none is that new (only older events were appended)."""
    since = data_end(current)
    if since is not None:
        newest = dataclasses.replace(eval_config, targets_after=since)
        users = read_split(prepared, schema.TEST_SPLIT, since).count()
        if users:
            start = f"{dt.datetime.fromtimestamp(since, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
            return newest, f"judged on the {users} users with held-out events after {start}"
    return eval_config, "judged on every user's held-out events (none newer than the parent)"


def measure_drift(current: Version, prepared: str, output: str, config: Config) -> dict:
    """How many of the users active since the parent's data ended have drifted: their
    interests (the parent's model, ``config.interests``) written to ``output``, and the share
    whose drift score is above ``retrain.drift_threshold``."""
    since = data_end(current)
    analyse_users(current.path, prepared, output, config.interests, active_since=since)
    with storage.open_input(storage.join(output, INTERESTS_PARQUET)) as source:
        scores = pq.read_table(source, columns=["drift"]).column("drift").to_numpy()
    threshold = config.retrain.drift_threshold
    drifted = int(np.sum(scores > threshold))
    share = drifted / len(scores) if len(scores) else 0.0
    return {
        "active_users": len(scores),
        "drifted_users": drifted,
        "share": round(share, 4),
        "threshold": threshold,
        "interests": output,
    }


def gate(candidate: dict, current: dict, retrain_config) -> tuple[bool, str]:
    """Promote unless the candidate is worse than current by more than the tolerance, or
    does not beat the most-popular list on the same rows by ``retrain.min_lift``."""
    metric, tolerance = retrain_config.metric, retrain_config.tolerance
    if metric not in candidate:
        raise MissingInputError(
            f"retrain.metric {metric!r} is not among the evaluated metrics "
            f"({sorted(k for k in candidate if '@' in k)}); set eval.ks to include it"
        )
    new, old = candidate[metric], current[metric]
    verdict = f"candidate {metric} {new:.4f} vs current {old:.4f} (tolerance {tolerance})"
    popular = (candidate.get("baseline_popularity") or {}).get(metric)
    if popular is not None and new < (1 + retrain_config.min_lift) * popular:
        return False, (
            f"{verdict}; but the most-popular list scores {popular:.4f} on the same rows and "
            f"the candidate does not beat it by {retrain_config.min_lift:.0%}: the newest "
            "events carry no sequential signal (a corrupted or shuffled log?)"
        )
    return new >= old - tolerance, verdict


def _loop_dataset(current: Version, workdir: str) -> str:
    """The loop's own growing dataset; started as a copy of the current version's, so the
    runs already trained on that one keep their data."""
    prepared = storage.join(workdir, PREPARED_DIR)
    if not storage.is_dir(prepared):
        source = run_layout.prepared_dir_of(current.path)
        log.info("starting the retraining dataset from %s", source)
        storage.copy_dir(source, prepared)
    return prepared


def _append(event_dirs: Sequence[str], prepared: str, manifest: dict) -> int:
    """Append every folder's new files with the dataset's own settings; files taken."""
    settings = DataConfig(**manifest["config"])
    taken = 0
    for events in event_dirs:
        taken += prepare_dataset(events, prepared, settings, append=True)["taken"]["files"]
    return taken


def _result(candidate, current, promoted, reason, candidate_metrics, current_metrics, growth):
    result = {
        "candidate": candidate,
        "parent": current.id,
        "promoted": promoted,
        "reason": reason,
        "candidate_metrics": _headline(candidate_metrics),
        "current_metrics": _headline(current_metrics),
        **growth,
    }
    tracking.log_turn(result)
    return result


def _headline(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "@" in k and k.split("@")[0] in ("hr", "ndcg")}
