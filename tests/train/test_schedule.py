"""A time budget is a schedule: the epochs that fit, and a decay that ends with the budget."""

from __future__ import annotations

import json

import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR

from recsys_dist.config import load_config
from recsys_dist.train.schedule import (
    decay_to,
    in_cooldown,
    planned_epochs,
    plateau_cooldown_end,
)
from recsys_dist.train.trainer import train


def test_no_budget_plans_every_epoch():
    assert planned_epochs(0.0, 60, done=3, elapsed_s=100.0, pace_s=10.0) == 60


def test_the_pace_sets_the_plan():
    # a slow first epoch (30 s), then 10 s ones: the 70 s left fit 7 more epochs, not 4
    assert planned_epochs(120.0, 60, done=3, elapsed_s=50.0, pace_s=10.0) == 10
    assert planned_epochs(120.0, 60, done=1, elapsed_s=30.0, pace_s=30.0) == 4


def test_the_plan_stays_between_what_is_done_and_the_configured_epochs():
    assert planned_epochs(1e6, 60, done=3, elapsed_s=50.0, pace_s=10.0) == 60
    assert planned_epochs(40.0, 60, done=3, elapsed_s=50.0, pace_s=10.0) == 3


def test_the_cool_down_is_the_last_share_of_the_plan_and_at_least_one_epoch():
    assert [in_cooldown(done, 20, 0.2) for done in (15, 16, 19)] == [False, True, True]
    assert in_cooldown(2, 3, 0.01) and not in_cooldown(1, 3, 0.01)


def test_a_plateau_cools_down_over_the_budget_share_of_the_epochs_so_far():
    assert plateau_cooldown_end(22, 0.2) == 27  # ceil(4.4) more
    assert plateau_cooldown_end(2, 0.2) == 3 and plateau_cooldown_end(3, 0.0) == 4  # one at least


def scheduler(warmup: int = 10, total: int = 100, lr: float = 0.01) -> WarmupDecayLR:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return WarmupDecayLR(
        optimizer, total, warmup_max_lr=lr, warmup_num_steps=warmup, warmup_type="linear"
    )


def rates(schedule: WarmupDecayLR, steps: int) -> dict[int, float]:
    """The rate at each of the next ``steps`` steps, by step number (the first step is 0)."""
    out = {}
    for _ in range(steps):
        schedule.step()
        out[schedule.last_batch_iteration] = schedule.get_last_lr()[0]
    return out


def test_an_earlier_end_decays_from_the_current_rate_to_zero_without_a_jump():
    moved, kept = scheduler(), scheduler()
    assert rates(moved, 40) == rates(kept, 40)  # steps 0-39: the same until the plan changes
    before = moved.get_last_lr()[0]
    decay_to(moved, last_step=60)
    assert moved.get_lr()[0] == pytest.approx(before)  # no jump at step 39, where it moved
    after = rates(moved, 30)  # steps 40-69
    decrements = [after[s - 1] - after[s] for s in range(41, 61)]
    assert before - after[40] == pytest.approx(before / 21)  # linear from step 39 ...
    assert decrements == pytest.approx([before / 21] * 20)
    assert after[60] == pytest.approx(0.0, abs=1e-12)  # ... to zero at step 60: annealed
    assert max(after[s] for s in range(60, 70)) == pytest.approx(0.0, abs=1e-12)


def test_a_move_during_warm_up_keeps_the_warm_up_and_ends_at_the_new_step():
    moved, kept = scheduler(warmup=10, total=100), scheduler(warmup=10, total=100)
    rates(moved, 5)  # steps 0-4
    rates(kept, 5)
    decay_to(moved, last_step=30)
    warm, unmoved = rates(moved, 26), rates(kept, 26)  # steps 5-30
    assert [warm[s] for s in range(5, 11)] == [unmoved[s] for s in range(5, 11)]
    assert warm[10] == pytest.approx(0.01)  # the peak, at the end of the warm-up
    assert warm[20] == pytest.approx(0.005) and warm[30] == pytest.approx(0.0, abs=1e-12)


def test_an_end_inside_the_warm_up_decays_from_the_current_rate():
    short = scheduler(warmup=10, total=100)
    rates(short, 5)  # steps 0-4: at 40 % of the peak
    before = short.get_last_lr()[0]
    decay_to(short, last_step=8)
    after = rates(short, 4)  # steps 5-8
    assert after[5] < before and after[8] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_a_budgeted_run_ends_annealed_at_the_epoch_that_fits(tiny_run, tmp_path):
    """One worker, far more epochs than the budget allows: training stops at the planned
    epoch with the learning rate at (nearly) zero, well before train.epochs; the rate never
    rises after the (2-step) warm-up."""
    config = load_config(
        tiny_run.run / "config.yaml",
        [
            # 20 s: the plan starts after 3 epochs; on a slow day 3 epochs took more than 12 s
            # and the run was cut before any plan (CI, 2026-12-02).
            *("train.workers=1", "train.epochs=1000", "train.time_budget_s=20"),
            *("train.eval_every=1", "train.warmup_steps=2"),
        ],
    )
    summary = train(str(tiny_run.prepared), str(tmp_path / "run"), config)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    last = lines[-1]
    assert summary.epochs == last["epoch"] == last["planned_epochs"] < 1000
    assert last["lr"] < 0.05 * config.train.lr, lines  # annealed, not cut at a high rate
    assert all(a["lr"] >= b["lr"] for a, b in zip(lines[1:], lines[2:])), lines


@pytest.mark.slow
def test_a_run_that_stops_improving_anneals_before_it_stops(tiny_run, tmp_path):
    """A rate too small to change the ranking: validation never improves on its first figure,
    so with patience 1 the second validation starts a cool-down (one epoch: a fifth of two,
    rounded up), and the run ends there at a zero rate, not at the second epoch's."""
    config = load_config(
        tiny_run.run / "config.yaml",
        [
            *("train.workers=1", "train.epochs=1000", "train.patience=1"),
            *("train.eval_every=1", "train.warmup_steps=0", "train.lr=1e-12"),
        ],
    )
    summary = train(str(tiny_run.prepared), str(tmp_path / "run"), config)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [line["epoch"] for line in lines] == [1, 2, 3] and summary.epochs == 3, lines
    assert lines[-1]["planned_epochs"] == 3
    assert lines[-1]["lr"] == pytest.approx(0.0, abs=1e-18) and lines[1]["lr"] > 0, lines
