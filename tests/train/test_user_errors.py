"""Retry only what can succeed on retry (conventions habit 20).

Ray Train restarts the workers after any worker failure, up to ``train.max_failures``; a user
error raised inside a worker would fail the same way on every attempt. It fails the run at
once instead, with its own message (exit 2 through the CLI), without using up the retry a lost
worker needs (tests/train/test_faults.py: a lost worker is still recovered).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from recsys_dist import cli, run_layout
from recsys_dist.errors import RunFailed, UserInputError, find_user_error
from recsys_dist.train import trainer
from recsys_dist.train.loop import train_loop_per_worker


def test_a_user_error_is_found_where_ray_carries_it():
    """As it reaches the controller or the driver: itself, inside a Ray task error (which
    may also pass for its type), or raised from; never an error met while handling one."""
    user = UserInputError("bad shape")

    class TaskError(UserInputError):  # like ray.exceptions.RayTaskError(UserInputError)
        def __init__(self, cause):
            super().__init__(f"Traceback (most recent call last): ... {cause}")
            self.cause = cause

    assert find_user_error(user) is user
    assert find_user_error(TaskError(user)) is user
    try:
        raise RuntimeError("wrapped") from user
    except RuntimeError as error:
        assert find_user_error(error) is user
    try:
        try:
            raise user
        except UserInputError:
            raise KeyError("a bug while handling it") from None
    except KeyError as error:
        assert find_user_error(error) is None
    assert find_user_error(RunFailed("a lost worker")) is None


@pytest.mark.slow
def test_a_user_error_in_a_worker_fails_at_once_with_its_message(
    tiny_run, tmp_path, monkeypatch, capsys
):
    """A warm start from an export of another shape, let through the driver's own check so
    that the worker's warm start raises it: one attempt, though train.max_failures=1 would
    allow a second, and the worker's message as the one error line."""
    attempts = tmp_path / "attempts"

    def counted(loop_config):  # a closure: shipped to the worker by value
        with open(attempts, "a") as out:
            out.write("attempt\n")
        train_loop_per_worker(loop_config)

    monkeypatch.setattr(trainer, "train_loop_per_worker", counted)
    monkeypatch.setattr(trainer, "_check_warm_start", lambda *args: None)
    parent = run_layout.model_dir(tiny_run.run)  # hidden_size 16
    model = dataclasses.asdict(tiny_run.config.model) | {"hidden_size": 32}
    argv = ["train", "--data", str(tiny_run.prepared), "--output", str(tmp_path / "run")]
    argv += ["--workers", "1", *(f"model.{k}={json.dumps(v)}" for k, v in model.items())]
    argv += [f"train.init_from={parent}", "train.max_failures=1"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert attempts.read_text().splitlines() == ["attempt"]  # not retried
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: train.init_from {parent}: "), err
    assert "the parent's shape (10, 16) differs from (10, 32)" in err[-1]
    assert "max_failures" not in err[-1]
