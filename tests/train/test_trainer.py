"""What ``train`` refuses before any training starts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, registry, run_layout, schema, storage
from recsys_dist.config import Config
from recsys_dist.errors import OutputExistsError
from recsys_dist.serving import event_log
from recsys_dist.train import trainer
from recsys_dist.train.trainer import train


def test_overwrite_never_deletes_served_events_inside_the_run(tmp_path):
    """Services before the event log moved beside the run wrote it inside: --overwrite
    refuses to delete acknowledged events, and leaves everything where it was."""
    run = tmp_path / "run"
    events = run / run_layout.EVENT_LOG_DIR / "events"
    events.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u"]}), events / "part-1.parquet")
    with pytest.raises(OutputExistsError, match="would delete the served events"):
        train(str(tmp_path / "prepared"), str(run), Config(), overwrite=True)
    assert (events / "part-1.parquet").exists()


class _Reached(Exception):
    """Raised where overwriting goes on past its checks: the test stops there."""


def _prepared(path):
    """A prepared dataset as far as ``train``'s checks read one (its manifest and users)."""
    (path / schema.USERS_DIR).mkdir(parents=True)
    (path / schema.MANIFEST_FILE).write_text("{}")
    pq.write_table(pa.table({"user_id": ["u"]}), path / schema.USERS_DIR / "part-0.parquet")
    return path


def _run(path, prepared):
    """What a finished run holds (the names ``train`` and Ray Train write)."""
    run_layout.write_run_record(str(path), str(prepared), {"data_hash": "h"})
    (path / run_layout.CONFIG_FILE).write_text("train: {}\n")
    (path / run_layout.METRICS_FILE).write_text('{"epoch": 1}\n')
    (path / run_layout.MODEL_DIR).mkdir()
    (path / run_layout.MODEL_DIR / "model.safetensors").write_bytes(b"weights")
    pq.write_table(pa.table({"item_id": ["i"]}), path / run_layout.MODEL_DIR / "vocab.parquet")
    snapshot = path / run_layout.RAY_RESULTS_DIR / run_layout.TRAIN_EXPERIMENT / "checkpoint_1"
    snapshot.mkdir(parents=True)
    (snapshot / "state.json").write_text("{}")
    return path


def _registry(root):
    """A registry with one registered, promoted version (laid out as a run)."""
    version = root / registry.VERSIONS_DIR / "20250101-000000-000-abcd"
    _run(version, root / "elsewhere")
    (version / registry.RECORD_FILE).write_text('{"version": "20250101-000000-000-abcd"}')
    (root / registry.CURRENT_FILE).write_text('{"version": "20250101-000000-000-abcd"}')
    return root


def _wal(path):
    """A service's write-ahead log: a segment and the lock of the log that owns it."""
    path.mkdir(parents=True)
    (path / f"00000000000000000001-abcd{event_log.WAL_SUFFIX}").write_bytes(event_log.WAL_MAGIC)
    (path / event_log.LOCK_FILE).write_bytes(b"")
    return path


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _cli_train(data, output) -> list[str]:
    return ["train", "--data", str(data), "--output", str(output), "--overwrite"]


@pytest.fixture
def no_ray(monkeypatch):
    """The CLI must refuse before Ray starts: starting it fails the test."""

    def started(*args, **kwargs):
        raise AssertionError("init_ray ran before the overwrite was refused")

    monkeypatch.setattr(cli.common, "init_ray", started)


@pytest.mark.parametrize("spelling", ["same", "trailing slash and '..'"])
def test_overwrite_refuses_to_delete_the_prepared_data(tmp_path, spelling):
    data = _prepared(tmp_path / "prepared")
    output = str(data) if spelling == "same" else f"{tmp_path}/x/../prepared/"
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match="which is the prepared data"):
        train(str(data), output, Config(), overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_refuses_a_run_that_holds_the_prepared_data(tmp_path):
    """A run (so not refused as something else) with the data inside it."""
    work = _run(tmp_path / "work", tmp_path / "work" / "prepared")
    data = _prepared(work / "prepared")
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match="holds the prepared data"):
        train(str(data), str(work), Config(), overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_refuses_an_output_inside_the_prepared_data(tmp_path):
    data = _prepared(tmp_path / "prepared")
    run = _run(data / "run", data)
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match="lies inside the prepared data"):
        train(str(data), str(run), Config(), overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_refuses_to_delete_the_prepared_data_on_s3(s3_prefix):
    work, data = f"{s3_prefix}/work", f"{s3_prefix}/work/prepared"
    run_layout.write_run_record(work, data, {"data_hash": "h"})
    storage.write_text(storage.join(data, schema.MANIFEST_FILE), "{}")
    with pytest.raises(OutputExistsError, match="holds the prepared data"):
        train(data, work + "/", Config(), overwrite=True)
    assert storage.is_file(storage.join(data, schema.MANIFEST_FILE)) and run_layout.is_run(work)


def test_overwrite_refuses_a_run_that_holds_an_event_log(tmp_path):
    """Parquet under ``events/`` anywhere in the run: a service's log or a raw dataset."""
    data = _prepared(tmp_path / "prepared")
    run = _run(tmp_path / "run", data)
    (run / "logs" / schema.EVENTS_DIR).mkdir(parents=True)
    pq.write_table(
        pa.table({"user_id": ["u"]}), run / "logs" / schema.EVENTS_DIR / "part-1.parquet"
    )
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match="holds an event log"):
        train(str(data), str(run), Config(), overwrite=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["todo.txt", "deep/down/todo.txt"])
def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, where):
    data = _prepared(tmp_path / "prepared")
    (tmp_path / "notes" / where).parent.mkdir(parents=True)
    (tmp_path / "notes" / where).write_text("keep me")
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match="is not a run"):
        train(str(data), str(tmp_path / "notes"), Config(), overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_takes_an_empty_folder(tmp_path, monkeypatch):
    data = _prepared(tmp_path / "prepared")
    (tmp_path / "empty" / "sub").mkdir(parents=True)

    def stop(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(trainer, "start_run", stop)
    with pytest.raises(_Reached):
        train(str(data), str(tmp_path / "empty"), Config(), overwrite=True)


@pytest.mark.parametrize("where", ["inside the run", "the registry", "a version"])
def test_train_overwrite_refuses_a_model_registry(tmp_path, capsys, no_ray, where):
    """Through the CLI, which checks before Ray starts: a registry in the run, the registry
    itself, one of its versions (laid out as a run)."""
    data = _prepared(tmp_path / "prepared")
    run = _run(tmp_path / "run", data)
    _registry(run / "registry")
    versions = _registry(tmp_path / "registry") / registry.VERSIONS_DIR
    output = {
        "inside the run": run,
        "the registry": tmp_path / "registry",
        "a version": next(versions.iterdir()),
    }[where]
    before = _tree(tmp_path)
    assert cli.main(_cli_train(data, output)) == 2
    error = capsys.readouterr().err
    assert "holds a model registry" in error and str(output) in error
    assert len(error.strip().splitlines()) == 1
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["inside the run", "the log itself"])
def test_train_overwrite_refuses_a_write_ahead_log(tmp_path, capsys, no_ray, where):
    data = _prepared(tmp_path / "prepared")
    run = _run(tmp_path / "run", data)
    _wal(run / "wal")
    output = run if where == "inside the run" else _wal(tmp_path / "wal")
    before = _tree(tmp_path)
    assert cli.main(_cli_train(data, output)) == 2
    assert "holds an event log's write-ahead log" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_overwrite_replaces_a_previous_run_and_nothing_beside_it(tmp_path, monkeypatch):
    """Through the CLI's checks and then ``train``'s: the run goes, the data and the service's
    event log beside it stay."""
    data = _prepared(tmp_path / "prepared")
    run = _run(tmp_path / "run", data)
    (tmp_path / run_layout.EVENT_LOG_DIR / schema.EVENTS_DIR).mkdir(parents=True)
    beside = tmp_path / run_layout.EVENT_LOG_DIR / schema.EVENTS_DIR / "part-1.parquet"
    pq.write_table(pa.table({"user_id": ["u"]}), beside)
    kept = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("run/")}

    def stop(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(cli.common, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(trainer, "start_run", stop)  # what train() does after deleting
    with pytest.raises(_Reached):
        cli.main(_cli_train(data, run))
    assert not run.exists()
    assert _tree(tmp_path) == kept
