"""``models`` (the registry: register, list, show, promote, roll back) and ``retrain`` (one
turn of the loop: new events -> warm-started candidate -> gate -> promote)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsys_dist import storage
from recsys_dist.cli import common
from recsys_dist.cli.command import Action, Command, done
from recsys_dist.cli.data import n


# --- models ---------------------------------------------------------------------------------
def _registry_argument(sub: argparse.ArgumentParser) -> None:
    common.add(sub, "--registry", required=True)


def _register_arguments(sub: argparse.ArgumentParser) -> None:
    common.add(sub, "--run", required=True)
    sub.add_argument("--parent", help="the version it was warm-started from (default: none)")


def _version_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("version", help="a version id (see `recsys-dist models list`)")


MODEL_ACTIONS = {
    "register": Action("copy a trained run into a new immutable version", _register_arguments),
    "list": Action("every version, oldest first, and which is current"),
    "show": Action("one version's record: lineage, metrics, code, config", _version_argument),
    "promote": Action("make a version current (what `serve --registry` serves)", _version_argument),
    "rollback": Action("make the previous current version current again"),
}


def _run_models(args: argparse.Namespace):
    from recsys_dist.registry import Registry

    registry = Registry(args.registry)
    action = args.action
    if action == "register":
        common.check_run(args.run)
        version = registry.register(args.run, parent=args.parent)
        return {"action": action, "version": version.id, "path": version.path}
    if action == "list":
        current = registry.current()
        current_id = current.id if current else None
        rows = [_version_row(v, current_id) for v in registry.versions()]
        return {
            "action": action,
            "registry": registry.root,
            "current": current_id,
            "versions": rows,
        }
    if action == "show":
        version = registry.get(args.version)
        current = registry.current()
        is_current = bool(current and current.id == version.id)
        return {**version.record, "action": action, "current": is_current}
    if action == "promote":
        return {"action": action, **registry.promote(args.version)}
    return {"action": action, **registry.rollback()}


def _version_row(version, current: str | None) -> dict:
    record = version.record
    return {
        "version": version.id,
        "parent": record["parent"],
        "created_at": record["created_at"],
        "current": version.id == current,
        "metrics": record["metrics"],
    }


def _models_summary(r: dict, args: Any, seconds: float) -> list[str]:
    action = r["action"]
    if action == "register":
        then = f"models promote --registry {args.registry} {r['version']}"
        return done(f"registered version {r['version']}", then=then)
    if action in ("promote", "rollback"):
        if not r["changed"]:
            return [f"{r['current']} is already current"]
        return [f"current: {r['current']} (was {r['previous'] or 'none'})"]
    if action == "list":
        return _versions_table(r)
    return [json.dumps(r, indent=2, sort_keys=True, default=str)]


def _versions_table(r: dict) -> list[str]:
    """One row per version: id, parent, creation time, validation NDCG@10, current marker."""
    if not r["versions"]:
        return [f"{r['registry']}: no versions yet (recsys-dist models register)"]
    lines = [f"  {'version':26}{'parent':26}{'created (UTC)':27}{'valid NDCG@10':>14}"]
    for row in r["versions"]:
        ndcg = row["metrics"].get("valid_ndcg@10")
        mark = "*" if row["current"] else " "
        lines.append(
            f"{mark} {row['version']:26}{row['parent'] or '-':26}{row['created_at']:27}"
            f"{'n/a' if ndcg is None else f'{ndcg:.4f}':>14}"
        )
    return [*lines, "* current"]


# --- retrain --------------------------------------------------------------------------------
def _retrain_arguments(sub: argparse.ArgumentParser) -> None:
    common.add(sub, "--registry", required=True)
    sub.add_argument(
        "--events",
        required=True,
        action="append",
        help="an event-log folder (repeatable); only files not taken before are read",
    )
    sub.add_argument(
        "--output",
        help="the loop's dataset and runs (default: retraining/ beside the registry)",
    )
    common.add(sub, "--workers")
    common.add(sub, "--gpu")
    sub.add_argument(
        "--when-drift",
        type=float,
        metavar="SHARE",
        help="train only when this share of the users active since the parent's data drifted "
        "(retrain.when_drift; drift above retrain.drift_threshold) "
        + common.default_from_config("retrain.when_drift"),
    )
    common.add_config_args(sub)  # on top of the parent version's own settings


def _run_retrain(args: argparse.Namespace):
    for events in args.events:
        common.require(storage.exists(events), f"--events {events}: no such directory")
    from recsys_dist.config import load_config
    from recsys_dist.registry import Registry
    from recsys_dist.retrain import parent_version, retrain

    flags = {
        "train.workers": args.workers,
        "train.use_gpu": True if args.gpu else None,
        "retrain.when_drift": args.when_drift,
    }
    # The parent's settings, then --config, the overrides and the flags (retrain.py).
    overrides = [
        *common.file_overrides(args.config),
        *args.overrides,
        *common.flag_overrides(flags),
    ]
    load_config(None, overrides)  # a bad override fails before Ray starts
    parent_version(Registry(args.registry))  # no version to start from: fail before Ray
    common.init_ray(args.address, min_cpus=4)
    return retrain(args.registry, args.events, args.output, overrides)


def _retrain_summary(r: dict, args: Any, seconds: float) -> list[str]:
    if r["candidate"] is None:
        return [f"{r['reason']}; {r['parent']} stays current"]
    growth = (
        f"took {r['new_files']} new file(s): {n(r['events'])} events, {n(r['new_items'])} new "
        f"item(s)"
    )
    verdict = "promoted" if r["promoted"] else "NOT promoted"
    return done(
        growth,
        f"candidate {r['candidate']} (from {r['parent']}) {verdict}: {r['reason']}",
        then=f"models list --registry {args.registry}",
    )


COMMANDS = (
    Command(
        "models",
        "the model registry: register, list, show, promote, roll back",
        _run_models,
        _models_summary,
        _registry_argument,
        actions=MODEL_ACTIONS,
    ),
    Command(
        "retrain",
        "one turn of the loop: new events -> warm-started candidate -> gate -> promote",
        _run_retrain,
        _retrain_summary,
        _retrain_arguments,
        starts_ray=True,
        description="One turn of the retraining loop: the new events, a candidate warm-started "
        "from the registry's current version, the gate, and the promotion if it passes.\n\n"
        "Its settings start from the current version's, then --config, the overrides and the "
        "flags (docs/retraining.md).",
    ),
)
