"""The model registry: immutable versions of trained models and an atomic ``current`` pointer.

    REGISTRY/versions/VERSION/run.json         the run's record (its prepared data, identity)
    REGISTRY/versions/VERSION/model/           the export (``checkpoint.py``'s layout); its
                                               state.json's ``model_version`` is VERSION
    REGISTRY/versions/VERSION/interests.json   the run's interest calibration, when it has one
    REGISTRY/versions/VERSION/items/           the item catalogue the run's data came with
    REGISTRY/versions/VERSION/config.yaml      the resolved config the run was trained with
    REGISTRY/versions/VERSION/version.json     the record (lineage, metrics, code); written LAST
    REGISTRY/current.json                      {"version": V, "previous": the one it replaced,
                                                "history": [earlier currents], "updated_at"}

A version directory is laid out as a run (``run_layout``), so every command that reads a run
reads a version (``--registry R [--version V]``); nothing ever writes into one again.

``REGISTRY`` is a local directory or an ``s3://`` prefix. Crash safety needs no lock and no
rename on S3: a version exists only once its ``version.json`` does, and that file is written
last, in one write (a single PUT on S3; a temporary file renamed over it locally). A
registration killed half-way leaves a directory without a record, which no reader lists. The
pointer is one small file replaced the same way, so ``current`` is always a whole, registered
version. Version ids are the registration's UTC time (to the millisecond) plus random hex: unique,
and sorted by creation.

Promotions are last-writer-wins: two promoters racing leave one of the two current and the
other in the history (a scheduler runs one retraining at a time).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import secrets
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_dist import checkpoint, run_layout, storage, tracking
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.data.catalogue import catalogue_dir
from recsys_dist.data.prepared import load_manifest
from recsys_dist.data.sequences import TimeHistogram
from recsys_dist.errors import MissingInputError, UserInputError

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
CURRENT_FILE = "current.json"
RECORD_FILE = "version.json"
MODEL_DIR = run_layout.MODEL_DIR
INTERESTS_FILE = run_layout.INTERESTS_FILE
CONFIG_FILE = run_layout.CONFIG_FILE
ITEMS_DIR = "items"
PACKAGE = "recsys-dist"


@dataclass(frozen=True)
class Pointer:
    """What ``current.json`` says: the current version, the one it replaced, and when."""

    version: str
    previous: str | None
    updated_at: float  # Unix seconds, the promoter's clock


@dataclass(frozen=True)
class Version:
    """A registered version: its id, its record and where its files are."""

    id: str
    record: dict[str, Any]
    path: str

    @property
    def model_dir(self) -> str:
        return storage.join(self.path, MODEL_DIR)

    @property
    def interests_file(self) -> str | None:
        """The calibration file, or ``None`` when the run had none."""
        return storage.join(self.path, INTERESTS_FILE) if self.record["has_interests"] else None

    @property
    def items_dir(self) -> str | None:
        """The catalogue snapshot, or ``None`` when the run's data had no catalogue."""
        return storage.join(self.path, ITEMS_DIR) if self.record["has_items"] else None


class Registry:
    """Versions under ``root`` (local or ``s3://``); every method reads the root afresh, so
    several processes (a trainer, the service's replicas) can share one registry.

    Args:
        root: The registry's directory or prefix; created on the first registration.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = storage.absolute(root)

    # --- versions -----------------------------------------------------------------------------

    def register(
        self, run_dir: str | Path, parent: str | None = None, metrics: dict | None = None
    ) -> Version:
        """Copy a trained run's export, calibration, catalogue and config into a new version.

        Args:
            run_dir: A run whose ``model/`` holds the export (``recsys-dist train``'s output).
            parent: The version this one was warm-started from, if any (must exist).
            metrics: Evaluation results to record (e.g. the retraining gate's, with their
                protocol); the export's own validation metrics are recorded either way.

        Returns:
            The new :class:`Version`, visible to readers only once complete.
        """
        run_dir = storage.absolute(run_dir)
        model_dir = run_layout.model_dir(run_dir)
        if not storage.exists(storage.join(model_dir, STATE_FILE)):
            raise MissingInputError(f"{run_dir}: no exported model (run `recsys-dist train`)")
        if parent is not None:
            self.get(parent)
        version_id = _new_version_id()
        path = storage.join(self.root, VERSIONS_DIR, version_id)
        _copy_named_model(model_dir, storage.join(path, MODEL_DIR), version_id)
        _copy_file(storage.join(run_dir, run_layout.RUN_RECORD), path, run_layout.RUN_RECORD)
        has_interests = _copy_file(run_layout.interests_file(run_dir), path, INTERESTS_FILE)
        _copy_file(run_layout.config_file(run_dir), path, CONFIG_FILE)
        items = catalogue_dir(run_layout.prepared_dir_of(run_dir))
        has_items = bool(items) and storage.is_dir(items)
        if has_items:
            storage.copy_dir(items, storage.join(path, ITEMS_DIR))
        record = {
            "version": version_id,
            "parent": parent,
            "created_at": _now().isoformat(timespec="seconds"),
            "source_run": run_dir,
            "code": code_version(),
            "metrics": {**_validation_metrics(model_dir), **(metrics or {})},
            "data": data_lineage(run_layout.prepared_dir_of(run_dir)),
            "model": storage.read_json(storage.join(model_dir, "config.json")),
            "has_interests": has_interests,
            "has_items": has_items,
        }
        storage.write_json_atomic(storage.join(path, RECORD_FILE), record)  # now it exists
        log.info("registered %s from %s", version_id, run_dir)
        tracking.log_version(record, path)
        return Version(version_id, record, path)

    def versions(self) -> list[Version]:
        """Every complete version, oldest first (a half-written one has no record yet)."""
        base = storage.join(self.root, VERSIONS_DIR)
        if not storage.is_dir(base):
            return []
        found = []
        for path in storage.list_files(base, RECORD_FILE, recursive=True):
            version_dir = storage.parent(path)
            if storage.parent(version_dir) == base:
                found.append(Version(Path(version_dir).name, storage.read_json(path), version_dir))
        return sorted(found, key=lambda v: v.id)

    def get(self, version: str) -> Version:
        """The version ``version``, or ``MissingInputError`` naming it and the registry."""
        path = storage.join(self.root, VERSIONS_DIR, version)
        record = storage.join(path, RECORD_FILE)
        if "/" in version or not storage.is_file(record):
            raise MissingInputError(f"{self.root}: no version {version!r} (see `models list`)")
        return Version(version, storage.read_json(record), path)

    # --- the current pointer ------------------------------------------------------------------

    def current(self) -> Version | None:
        """The current version, or ``None`` before the first promotion."""
        pointer = self._pointer()
        return self.get(pointer["version"]) if pointer else None

    def pointer(self) -> Pointer | None:
        """The pointer itself (``None`` before the first promotion): a server that switches
        its replicas at one instant needs when it moved and from what."""
        pointer = self._pointer()
        if pointer is None:
            return None
        updated = dt.datetime.fromisoformat(pointer["updated_at"]).timestamp()
        return Pointer(pointer["version"], pointer.get("previous"), updated)

    def promote(self, version: str) -> dict[str, Any]:
        """Make ``version`` current; the one it replaces goes to the head of the history."""
        self.get(version)
        pointer = self._pointer() or {"version": None, "history": []}
        previous = pointer["version"]
        if previous == version:
            return {"current": version, "previous": previous, "changed": False}
        history = [previous, *pointer["history"]] if previous else pointer["history"]
        self._write_pointer(version, previous, history)
        log.info("promoted %s (was %s)", version, previous)
        tracking.log_current(version)
        return {"current": version, "previous": previous, "changed": True}

    def rollback(self) -> dict[str, Any]:
        """Make the previous current version current again (what a bad promotion replaced)."""
        pointer = self._pointer()
        if not pointer or not pointer["history"]:
            raise UserInputError(f"{self.root}: no earlier current version to roll back to")
        previous, *rest = pointer["history"]
        self._write_pointer(previous, pointer["version"], rest)
        log.info("rolled back to %s (was %s)", previous, pointer["version"])
        tracking.log_current(previous)
        return {"current": previous, "previous": pointer["version"], "changed": True}

    def _pointer(self) -> dict[str, Any] | None:
        path = storage.join(self.root, CURRENT_FILE)
        return storage.read_json(path) if storage.is_file(path) else None

    def _write_pointer(self, version: str, previous: str | None, history: list[str]) -> None:
        pointer = {
            "version": version,
            "previous": previous,
            "history": history,
            "updated_at": _now().isoformat(),
        }
        storage.write_json_atomic(storage.join(self.root, CURRENT_FILE), pointer)


def registry_files(paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` that mark a registry (its pointer) or a registered version
    (``versions/VERSION/version.json``): a folder listing any of them is, holds or lies in a
    registry, which a command that deletes folders (``train --overwrite``) must never delete.

    A function of a listing rather than of a folder, so a caller with several such checks
    lists the folder once (one LIST walk on S3).
    """
    found = []
    for path in paths:
        parts = path.rstrip("/").split("/")
        version_record = parts[-1] == RECORD_FILE and len(parts) > 2 and parts[-3] == VERSIONS_DIR
        if parts[-1] == CURRENT_FILE or version_record:
            found.append(path)
    return found


# --- what a record says -----------------------------------------------------------------------


def code_version() -> dict[str, str | None]:
    """The installed package version and, in a git checkout, its commit (else ``None``)."""
    try:
        package = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        package = None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"package": package, "git_sha": sha or None}


def data_lineage(prepared_dir: str) -> dict[str, Any]:
    """What the model saw: the dataset's hash, its input files and event-time span (to the
    time histogram's bin width, ~1/4,096 of the span), and its size."""
    manifest = load_manifest(prepared_dir)
    times = TimeHistogram.from_dict(manifest["time_histogram"])
    span = [times.first << times.shift, times.last_second] if len(times.counts) else None
    return {
        "prepared": prepared_dir,
        "data_hash": manifest["data_hash"],
        "input_files": manifest.get("input_files", []),
        "event_time_range": span,
        "events": manifest["counts"]["events"],
        "users": manifest["counts"]["users"],
        "items": manifest["num_items"],
    }


def _copy_named_model(model_dir: str, target: str, version_id: str) -> None:
    """Copy an export, named by its version (responses and logs name the model by
    ``predictor.model_version``, so two versions trained on the same data never share a
    name), and sealed again: its ``sha256.json`` covers the renamed state."""
    with tempfile.TemporaryDirectory(prefix="recsys-dist-version-") as local:
        storage.copy_dir(model_dir, local)
        checkpoint.verify(local, model_dir)  # never re-seal what was tampered with
        state_file = storage.join(local, STATE_FILE)
        state = storage.read_json(state_file)
        storage.write_json(state_file, {**state, "model_version": version_id})
        checkpoint.seal(local)
        storage.copy_dir(local, target)


def _validation_metrics(model_dir: str) -> dict[str, float]:
    state = storage.read_json(storage.join(model_dir, STATE_FILE))
    metrics = state.get("metrics", {})
    return {k: v for k, v in metrics.items() if k.startswith("valid_") or k == "epoch"}


def _copy_file(source: str, version_dir: str, name: str) -> bool:
    if not storage.is_file(source):
        return False
    storage.write_bytes(storage.join(version_dir, name), storage.read_bytes(source))
    return True


def _new_version_id() -> str:
    """``YYYYMMDD-HHMMSS-mmm-xxxx`` (UTC to the millisecond, then random hex): sorts by
    creation and never repeats, even for two registrations in the same millisecond."""
    now = _now()
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
