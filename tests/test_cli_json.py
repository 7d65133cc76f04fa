"""``--json`` is lossless: a command's whole result, however long its lists, but for the
bulky internals it names (which stay in the files it wrote); and one JSON document per
command, ``serve`` included. Nothing here starts Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_dist import cli, console, run_layout
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.registry import RECORD_FILE, VERSIONS_DIR, Registry
from recsys_dist.serving.auth import KeysFile

MANY = 200  # four times the old cut-off (50), at which lists silently disappeared


def run_json(capsys, *argv: str) -> dict:
    code = cli.main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1, captured.out[:300]  # one document, one line
    return json.loads(captured.out)


def test_models_list_keeps_every_version(tmp_path, capsys):
    root = tmp_path / "registry"
    for i in range(MANY):
        version = root / VERSIONS_DIR / f"v{i:04d}"
        version.mkdir(parents=True)
        record = {"version": version.name, "parent": None, "created_at": "2026-01-01T00:00:00"}
        (version / RECORD_FILE).write_text(json.dumps({**record, "metrics": {"n": i}}))
    listed = run_json(capsys, "models", "list", "--registry", str(root))
    assert [row["version"] for row in listed["versions"]] == [f"v{i:04d}" for i in range(MANY)]
    assert [row["metrics"]["n"] for row in listed["versions"]] == list(range(MANY))
    assert len(Registry(str(root)).versions()) == MANY


def test_keys_list_keeps_every_key(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    keys = KeysFile(path)
    for i in range(MANY):
        keys.create(f"key-{i}", ["recommend"])
    listed = run_json(capsys, "keys", "list", "--file", path)
    assert [key["name"] for key in listed["keys"]] == [f"key-{i}" for i in range(MANY)]
    assert "sha256" not in json.dumps(listed)  # public fields only, as before


def planted() -> dict:
    """A result with a long list and a long mapping at every depth, none of them named."""
    deep = {"values": list(range(MANY)), "by_id": {f"u{i}": i for i in range(MANY)}}
    return {
        "action": "list",
        "rows": [dict(deep, row=i) for i in range(MANY)],
        "nested": {"level": {"deeper": deep}},
        **deep,
    }


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_prints_a_long_result_whole(name, capsys):
    command = cli.COMMANDS[name]
    console.print_result(command.for_json(planted()), as_json=True)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == planted()


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_only_the_named_internals_are_left_out(name):
    command = cli.COMMANDS[name]
    result = {**planted(), **{key: list(range(MANY)) for key in command.json_omits}}
    assert command.for_json(result) == planted()


def test_prepare_names_the_bulky_parts_of_its_manifest():
    """The time histogram and the per-file records stay in manifest.json (docs: README)."""
    omitted = set(cli.COMMANDS["prepare"].json_omits)
    assert {"time_histogram", "input_files", "bad_rows"} <= omitted
    assert not omitted & {"counts", "config", "files", "num_items", "data_hash", "split"}
    assert all(
        not command.json_omits for name, command in cli.COMMANDS.items() if name != "prepare"
    )


@pytest.fixture
def run(tmp_path) -> str:
    """A directory that passes ``serve``'s checks (a run record and an export), no more."""
    run = tmp_path / "run"
    model = Path(run_layout.model_dir(str(run)))
    model.mkdir(parents=True)
    (model / STATE_FILE).write_text("{}")
    (run / run_layout.RUN_RECORD).write_text(json.dumps({run_layout.PREPARED: str(tmp_path)}))
    return str(run)


def test_serve_prints_one_json_document_when_it_starts_and_none_when_it_stops(
    run, monkeypatch, capsys
):
    from recsys_dist.cli import serve

    monkeypatch.setattr(cli.common, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr("recsys_dist.serving.app.use_haproxy_ingress", lambda: None)
    monkeypatch.setattr(
        "recsys_dist.serving.app.run_service", lambda *a, **k: "http://127.0.0.1:8123"
    )
    monkeypatch.setattr(serve, "_wait_for_interrupt", lambda: None)  # as if Ctrl-C came
    started = run_json(capsys, "serve", "--run", run, "--port", "8123")
    assert started == {"url": "http://127.0.0.1:8123", "docs": "http://127.0.0.1:8123/docs"}
    assert cli.main(["serve", "--run", run, "--port", "8123"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("serving on http://127.0.0.1:8123") and out[-1].startswith("stopped")
