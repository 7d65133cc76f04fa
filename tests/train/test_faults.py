"""Training faults: a Ray Train worker process killed with SIGKILL mid-run.

The first loss is recovered (``train.max_failures`` is 1 by default): the workers restart
from the latest checkpoint, with the optimizer and schedule state it carries, and the run
finishes where an uninterrupted one does. A second loss is more than the run may take: it
fails with one line that says what happened and how to resume, and the same command, run
again, resumes from the checkpoint and finishes. Exact resumption of the optimizer itself is
checked without Ray in tests/train/test_resume.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from recsys_dist import cli, run_layout

DEADLINE_S = 300
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


class WorkerKiller(threading.Thread):
    """Kills one training worker process at each of ``triggers`` in turn: ("checkpoint", E)
    once Ray Train has registered the checkpoint of epoch E (its snapshot says so), or
    ("validated", E) once rank 0 has written epoch E's validation, just before it reports:
    mid-run for sure, as epochs remain."""

    def __init__(self, run: Path, triggers: list[tuple[str, int]]) -> None:
        super().__init__(daemon=True)
        results = Path(run_layout.ray_results_dir(run), run_layout.TRAIN_EXPERIMENT)
        self.run_dir, self.snapshot = run, results / SNAPSHOT
        self.triggers, self.killed, self.done = list(triggers), [], threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while self.triggers and not self.done.is_set() and time.monotonic() < deadline:
            kind, epoch = self.triggers[0]
            reached = (
                _latest_checkpoint_epoch(self.snapshot)
                if kind == "checkpoint"
                else max((m["epoch"] for m in _metrics(self.run_dir)), default=0)
            )
            worker = _a_training_worker() if reached >= epoch else None
            if worker is not None:
                os.kill(worker, signal.SIGKILL)
                self.killed.append(self.triggers.pop(0))
            self.done.wait(0.02)  # a poll interval, bounded by the deadline


def _metrics(run: Path) -> list[dict]:
    try:
        return run_layout.read_metrics(run)
    except ValueError:  # caught mid-rewrite
        return []


def _latest_checkpoint_epoch(snapshot: Path) -> int:
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return 0
    latest = state.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("epoch", 0))


def _a_training_worker() -> int | None:
    """The PID of a live Ray Train worker of this test's run (Ray titles its actor processes
    by class): one of this session's Ray (its raylet is this process's child), never another
    one's on a shared machine, and the newest, never one of a worker group being replaced."""
    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in process.cmdline()):
                workers.append((process.create_time(), process.pid))
        except psutil.Error:  # gone meanwhile
            continue
    return max(workers)[1] if workers else None


def _train(trained_run, run: Path, capsys) -> tuple[int, str, str]:
    argv = ["train", "--data", str(trained_run.prepared), "--output", str(run)]
    code = cli.main([*argv, "--workers", "2", *trained_run.model, "--json"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_a_lost_worker_is_recovered_a_second_loss_fails_clearly_and_a_rerun_finishes(
    trained_run, tmp_path, capsys
):
    """The shared run's data and config (30 epochs, a checkpoint every 10): a worker killed
    after the first checkpoint, another once epoch 20 has validated."""
    run = tmp_path / "run"
    killer = WorkerKiller(run, [("checkpoint", 10), ("validated", 20)])
    killer.start()
    try:
        code, _, err = _train(trained_run, run, capsys)
    finally:
        killer.done.set()
        killer.join()
    assert killer.killed == [("checkpoint", 10), ("validated", 20)]
    assert code == 1, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: training failed")
    assert "train.max_failures=1" in message and "rerun" in message
    assert "Traceback" not in err

    code, out, err = _train(trained_run, run, capsys)  # the same command resumes
    assert code == 0, err
    lines = run_layout.read_metrics(run)
    assert [line["epoch"] for line in lines] == [10, 20, 30]  # each once, in order
    # Resumed from epoch 10's checkpoint after the first loss (restart 1); the rerun from the
    # latest checkpoint Ray Train registered before the second: 20's, or 10's if the loss
    # came first.
    restarts = [line["train_restarts"] for line in lines]
    assert restarts in ([0, 1, 2], [0, 1, 1]), restarts
    # Within the noise of the uninterrupted shared run: seeds give sd ~0.02 on this data
    # (tests/train/test_distributed.py), 3 sd of a difference of two runs is ~0.08.
    finished = json.loads(out.strip().splitlines()[-1])
    expected = trained_run.summary["best_metrics"]["valid_ndcg@10"]
    assert abs(finished["best_metrics"]["valid_ndcg@10"] - expected) < 0.08
