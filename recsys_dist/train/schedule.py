"""A time budget is a schedule: the learning rate decays to zero when the budget runs out.

Without a budget the run follows DeepSpeed's ``WarmupDecayLR`` over ``train.epochs`` (built in
``deepspeed_config.py``). With ``train.time_budget_s``, cutting that schedule where the time
runs out would stop a run at a high learning rate, unannealed. Instead, after every epoch the
loop asks :func:`planned_epochs` how many epochs fit the budget at the pace measured so far,
and :func:`decay_to` moves the end of the decay there: from the current rate, linearly, to
zero at the planned last step, so the rate never jumps and the last epoch ends annealed.
"""

from __future__ import annotations

import math

from deepspeed.runtime.lr_schedules import WarmupDecayLR


def planned_epochs(
    budget_s: float, max_epochs: int, done: int, elapsed_s: float, pace_s: float
) -> int:
    """The epochs that fit ``budget_s`` at ``pace_s`` seconds an epoch, between ``done`` and
    ``max_epochs``.

    The loop's pace is the mean of the latest few epochs (a whole validation cycle at least),
    validation included, as it counts against the budget too; it plans only once the first
    epoch is out of that window: early epochs are slower than the rest (the first streams the
    data that later ones replay from memory; the first validations read theirs), and an
    average over them planned too few epochs, a plan that then kept growing.
    """
    if budget_s <= 0 or done <= 0 or pace_s <= 0:
        return max_epochs
    fit = done + math.floor(max(0.0, budget_s - elapsed_s) / pace_s)
    return max(done, min(max_epochs, fit))


def in_cooldown(done: int, planned: int, cooldown: float) -> bool:
    """Whether the run has reached its cool-down: the last ``cooldown`` share of ``planned``
    epochs, over which the rate decays to zero (at least the last epoch)."""
    return planned - done <= max(1, math.ceil(cooldown * planned))


def plateau_cooldown_end(done: int, cooldown: float) -> int:
    """The epoch a cool-down started at a plateau after ``done`` epochs ends at: the last
    ``cooldown`` share of the epochs run so far, added on (at least one epoch), as a budget's
    plan would have ended had it planned ``done`` epochs before its cool-down."""
    return done + max(1, math.ceil(cooldown * done))


def decay_to(scheduler: WarmupDecayLR, last_step: int) -> None:
    """End ``scheduler``'s linear decay at ``last_step`` without a jump in the rate.

    During a warm-up that ends before ``last_step`` only the end moves (the decay will start
    from the peak). Otherwise the decay restarts from the current rate at the current step:
    ``WarmupDecayLR`` decays linearly from ``min + delta`` at ``warmup_num_steps`` to ``min``
    at ``total_num_steps``, so those three move to (current rate, current step, last step).
    """
    step = max(scheduler.last_batch_iteration, 0)
    last_step = max(last_step, step + 1)
    if step >= scheduler.warmup_num_steps or last_step <= scheduler.warmup_num_steps:
        current = scheduler.get_lr()
        scheduler.delta_lrs = [lr - low for lr, low in zip(current, scheduler.min_lrs)]
        scheduler.warmup_num_steps = step
    scheduler.total_num_steps = max(last_step, scheduler.warmup_num_steps + 1)
