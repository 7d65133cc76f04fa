"""The model registry: immutable versions, lineage records, an atomic current pointer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from recsys_dist import cli, storage
from recsys_dist.data.prepared import load_manifest
from recsys_dist.errors import MissingInputError, UserInputError
from recsys_dist.inference.predictor import Recommender
from recsys_dist.registry import (
    CURRENT_FILE,
    RECORD_FILE,
    VERSIONS_DIR,
    Registry,
    registry_files,
)


def test_a_version_holds_the_export_and_says_where_it_came_from(tiny_run, tmp_path):
    registry = Registry(tmp_path / "registry")
    version = registry.register(tiny_run.run)
    record = version.record
    manifest = load_manifest(str(tiny_run.prepared))
    assert record["version"] == version.id and record["parent"] is None
    assert record["source_run"] == str(tiny_run.run)
    assert record["data"]["data_hash"] == manifest["data_hash"]
    assert record["data"]["input_files"] == manifest["input_files"]
    first, last = record["data"]["event_time_range"]
    assert 0 <= first < last
    assert record["metrics"]["valid_ndcg@10"] == pytest.approx(0.04)  # the export's epoch 2
    assert record["model"]["hidden_size"] == tiny_run.config.model.hidden_size
    assert set(record["code"]) == {"package", "git_sha"} and record["code"]["package"]
    assert storage.is_file(f"{version.model_dir}/model.safetensors")
    assert storage.is_file(f"{version.path}/config.yaml")
    assert version.items_dir is not None and storage.list_files(version.items_dir, ".parquet")
    assert registry.get(version.id).record == record


def test_versions_are_unique_ordered_and_name_their_parent(tiny_run, tmp_path):
    registry = Registry(tmp_path / "registry")
    first = registry.register(tiny_run.run)
    second = registry.register(tiny_run.run, parent=first.id, metrics={"gate_ndcg@10": 0.1})
    assert first.id != second.id
    assert [v.id for v in registry.versions()] == [first.id, second.id]
    assert second.record["parent"] == first.id and second.record["metrics"]["gate_ndcg@10"] == 0.1
    with pytest.raises(MissingInputError, match="no version 'nope'"):
        registry.register(tiny_run.run, parent="nope")


def test_promote_and_rollback_move_one_pointer(tiny_run, tmp_path):
    registry = Registry(tmp_path / "registry")
    assert registry.current() is None
    v1, v2 = registry.register(tiny_run.run), registry.register(tiny_run.run)
    assert registry.promote(v1.id) == {"current": v1.id, "previous": None, "changed": True}
    assert registry.promote(v2.id)["previous"] == v1.id
    assert registry.promote(v2.id)["changed"] is False  # promoting current again: no history
    assert registry.current().id == v2.id
    promoted = registry.pointer()
    assert (promoted.version, promoted.previous) == (v2.id, v1.id)
    assert registry.rollback() == {"current": v1.id, "previous": v2.id, "changed": True}
    assert registry.current().id == v1.id
    rolled_back = registry.pointer()  # what the replicas switch from, and from when
    assert (rolled_back.version, rolled_back.previous) == (v1.id, v2.id)
    assert promoted.updated_at <= rolled_back.updated_at <= time.time()
    with pytest.raises(UserInputError, match="no earlier current version"):
        registry.rollback()
    with pytest.raises(MissingInputError, match="no version '../x'"):
        registry.promote("../x")
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == [CURRENT_FILE, VERSIONS_DIR]


def test_a_registration_killed_mid_copy_leaves_nothing_visible(tiny_run, tmp_path):
    """A real SIGKILL in the middle of copying the version's files: the registry still lists
    only the complete version and ``current`` still names it."""
    root = tmp_path / "registry"
    registry = Registry(root)
    complete = registry.register(tiny_run.run)
    registry.promote(complete.id)
    script = f"""
import os, signal
from recsys_dist import registry, storage
copy = storage.copy_dir
def copy_then_die(source, destination):
    copy(source, destination)
    if str(destination).startswith({str(root)!r}):  # not the staging copy in a temp dir
        os.kill(os.getpid(), signal.SIGKILL)  # the model is copied, the record is not written
registry.storage.copy_dir = copy_then_die
registry.Registry({str(root)!r}).register({str(tiny_run.run)!r})
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    half = [p for p in (root / VERSIONS_DIR).iterdir() if p.name != complete.id]
    assert len(half) == 1 and (half[0] / "model").is_dir()  # the half version is on disk ...
    assert [v.id for v in registry.versions()] == [complete.id]  # ... and invisible
    assert registry.current().id == complete.id
    pointer = json.loads((root / CURRENT_FILE).read_text())
    assert pointer["version"] == complete.id


def test_registry_files_mark_a_registry_and_its_versions_but_not_a_run(tiny_run, tmp_path):
    """What ``train --overwrite`` refuses to delete: a real registry's pointer and version
    records are found from any folder that holds them, and the run they came from has none."""
    root = tmp_path / "registry"
    registry = Registry(root)
    first, second = registry.register(tiny_run.run), registry.register(tiny_run.run)
    registry.promote(first.id)
    found = registry_files(storage.list_files(root, ""))
    assert sorted(found) == sorted(
        [str(root / CURRENT_FILE), *(f"{v.path}/{RECORD_FILE}" for v in (first, second))]
    )
    assert registry_files(storage.list_files(second.path, "")) == [f"{second.path}/{RECORD_FILE}"]
    assert registry_files(storage.list_files(tiny_run.run, "")) == []


def test_registering_needs_an_exported_model(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(MissingInputError, match="no exported model"):
        Registry(tmp_path / "registry").register(tmp_path / "run")


def test_an_s3_registry_works_the_same(tiny_run, s3_prefix):
    registry = Registry(f"{s3_prefix}/registry")
    v1 = registry.register(tiny_run.run)
    v2 = registry.register(tiny_run.run, parent=v1.id)
    registry.promote(v1.id)
    registry.promote(v2.id)
    assert [v.id for v in registry.versions()] == [v1.id, v2.id]
    assert registry.rollback()["current"] == v1.id
    assert storage.is_file(f"{registry.get(v2.id).model_dir}/model.safetensors")


def test_the_models_command_drives_the_registry(tiny_run, tmp_path, cli_json, capsys):
    root = str(tmp_path / "registry")
    first = cli_json("models", "register", "--registry", root, "--run", str(tiny_run.run))
    second = cli_json(
        "models", "register", "--registry", root, "--run", str(tiny_run.run), "--parent",
        first["version"],
    )  # fmt: skip
    assert cli_json("models", "promote", "--registry", root, first["version"])["changed"]
    assert (
        cli_json("models", "promote", "--registry", root, second["version"])["previous"]
        == (first["version"])
    )
    listed = cli_json("models", "list", "--registry", root)
    assert [(r["version"], r["parent"], r["current"]) for r in listed["versions"]] == [
        (first["version"], None, False),
        (second["version"], first["version"], True),
    ]
    shown = cli_json("models", "show", "--registry", root, second["version"])
    assert shown["current"] and shown["data"]["data_hash"]
    assert cli_json("models", "rollback", "--registry", root)["current"] == first["version"]
    assert cli.main(["models", "list", "--registry", root]) == 0
    table = capsys.readouterr().out
    assert f"* {first['version']}" in table and "valid NDCG@10" in table, table
    by_version = cli_json("evaluate", "--registry", root, "--split", "valid")  # v1 is current
    by_run = cli_json("evaluate", "--run", str(tiny_run.run), "--split", "valid")
    assert by_version["ndcg@10"] == pytest.approx(by_run["ndcg@10"], rel=1e-9)  # summing order
    assert Recommender(registry_model(root, second["version"])).model_version == second["version"]
    assert cli.main(["interests", "--registry", root, "--evaluate"]) == 2
    assert "a registry version is read-only" in capsys.readouterr().err
    assert cli.main(["models", "promote", "--registry", root, "v9"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {root}: no version 'v9' (see `models list`)"


def registry_model(root: str, version: str) -> str:
    return Registry(root).get(version).model_dir
