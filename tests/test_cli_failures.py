"""Failures the user did not cause are one line too: exit 1 for the environment (a path this
user may not write, an object store or a Ray address that does not answer), 130 for Ctrl-C,
and never a traceback; ``-v`` prints the traceback first. Through the real CLI: ``main``, or
a ``recsys-dist`` process where a fresh interpreter matters (no Ray started yet)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_dist import cli, schema, storage
from recsys_dist.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED

COMMAND = [sys.executable, "-m", "recsys_dist.cli"]
# Lines Ray forwards from its worker processes, "(ActorName pid=N) ...", maybe coloured: not
# the command's own output (a State API helper in Ray Train's controller complains there when
# several Ray instances share the machine, as the test session's and this process's do).
FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)*\(\w+ pid=\d+(, ip=[\d.]+)?\)")


def one_error_line(err: str, code: int, expected: int) -> str:
    assert code == expected, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def fresh_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "TQDM_DISABLE": "1", **extra}


def unwritable() -> Path:
    """A path no user may create, root included (a test as root reads any chmod-000 file)."""
    target = Path("/sys/recsys-dist-test-keys.json")
    try:
        target.write_text("{}")
    except PermissionError:
        return target
    except OSError as error:
        pytest.skip(f"/sys refuses writes with {error!r}, not a PermissionError")
    target.unlink()
    pytest.skip("/sys is writable here")


def test_a_path_this_user_may_not_write_is_exit_1_naming_it(capsys):
    target = unwritable()
    code = cli.main(
        ["keys", "create", "--file", str(target), "--name", "a", "--scopes", "recommend"]
    )
    line = one_error_line(capsys.readouterr().err, code, EXIT_FAILED)
    assert line.startswith("error: ") and "/sys/" in line and "may not read or write" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 folder (see /sys above)")
def test_an_unreadable_data_folder_is_exit_1_naming_it(tmp_path, capsys):
    events = tmp_path / "raw" / schema.EVENTS_DIR
    events.mkdir(parents=True)
    (events / "part-0.parquet").write_bytes(b"")
    events.chmod(0)
    try:
        code = cli.main(["prepare", "--data", str(tmp_path / "raw"), "--output", str(tmp_path)])
    finally:
        events.chmod(0o755)
    line = one_error_line(capsys.readouterr().err, code, EXIT_FAILED)
    assert str(events) in line and "may not read or write" in line


def test_verbose_prints_the_traceback_before_the_one_line(capsys):
    target = unwritable()
    argv = ["-v", "keys", "create", "--file", str(target), "--name", "a", "--scopes", "recommend"]
    assert cli.main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: ")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket closes


@pytest.fixture
def dead_object_store(monkeypatch):
    """AWS settings that point at a closed port, one attempt per request."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "none",
        "AWS_SECRET_ACCESS_KEY": "none",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 1)
    storage._s3.cache_clear()
    yield "s3://recsys-nowhere"
    storage._s3.cache_clear()


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "list", "--registry", "{store}/registry"],
        ["keys", "list", "--file", "{store}/keys.json"],
    ],
)
def test_an_object_store_that_does_not_answer_is_exit_1_naming_it(argv, dead_object_store, capsys):
    started = time.monotonic()
    code = cli.main([arg.format(store=dead_object_store) for arg in argv])
    line = one_error_line(capsys.readouterr().err, code, EXIT_FAILED)
    assert "recsys-nowhere" in line and "AWS_ENDPOINT_URL" in line, line
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_a_ray_address_that_does_not_answer_is_exit_1_naming_it(how, tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    argv = [*COMMAND, "generate", "--output", str(tmp_path / "raw")]
    env = fresh_env()
    if how == "--address":
        argv += ["--address", address]
    else:
        env["RAY_ADDRESS"] = address
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    line = one_error_line(done.stderr, done.returncode, EXIT_FAILED)
    assert line.startswith(f"error: {how} {address}: no Ray cluster answers there"), line
    assert done.stdout == "" and not (tmp_path / "raw").exists()


def kept(run: Path) -> bool:
    """Whether the run has registered a checkpoint (what a rerun resumes from)."""
    from recsys_dist.train.trainer import checkpoints_kept

    try:
        return "are kept" in checkpoints_kept(str(run))
    except Exception:  # noqa: BLE001 - the snapshot half-written: not yet
        return False


@pytest.mark.slow
def test_ctrl_c_during_train_is_exit_130_and_the_same_command_resumes(tiny_run, tmp_path):
    """SIGINT once the run has a checkpoint: one line, exit 130, no traceback; rerunning the
    command it names resumes from that checkpoint (the first validation is not redone)."""
    run = tmp_path / "run"
    argv = [*COMMAND, "train", "--data", str(tiny_run.prepared), "--output", str(run)]
    argv += ["--workers", "1", "train.epochs=6", "train.eval_every=1", "train.batch_size=32"]
    argv += [f"model.{k}={v}" for k, v in (("hidden_size", 16), ("intermediate_size", 32))]
    argv += ["model.num_layers=1", "model.num_heads=2"]
    train = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fresh_env()
    )
    deadline = time.monotonic() + 400
    while not kept(run) and train.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert train.poll() is None, "training ended before it could be interrupted"
    train.send_signal(signal.SIGINT)
    out, err = train.communicate(timeout=180)
    own = [line for line in err.splitlines() if not FORWARDED.match(line)]
    assert train.returncode == EXIT_INTERRUPTED, err
    assert len(own) == 1 and "Traceback" not in "\n".join(own), err
    assert own[0].startswith(f"interrupted: training into {run} stopped; its checkpoints are kept")
    assert "rerun the same command to resume" in own[0] and out == ""
    before = (run / "metrics.jsonl").read_text().splitlines()

    again = subprocess.run(
        [*argv, "--json"], capture_output=True, text=True, env=fresh_env(), timeout=400
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["epochs"] == 6
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[0] == before[0]  # restored from the checkpoint, timings and all: not redone
    assert [json.loads(row)["epoch"] for row in after] == [1, 2, 3, 4, 5, 6]
