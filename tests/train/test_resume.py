"""A checkpoint's optimizer and schedule state: a run resumed from it takes the same steps as
the run it interrupted, for every ZeRO stage the loop offers; without it, it would not.

One process, a gloo group of one, the loop's own DeepSpeed engine; the killed-worker path
through Ray Train is tests/train/test_faults.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recsys_dist.checkpoint import RESUME_STATE_FILE, RESUME_TENSORS_FILE
from recsys_dist.config import Config, TrainConfig
from recsys_dist.model import Bert4Rec
from recsys_dist.train import resume
from recsys_dist.train.loop import _deepspeed_engine
from recsys_dist.train.schedule import decay_to
from tests.model.tiny import batch, tiny_config

STEPS_BEFORE, STEPS_AFTER, TOTAL_STEPS = 6, 6, 40


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group, as Ray Train sets up on each worker (DeepSpeed reads the env)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0", "RANK": "0", "WORLD_SIZE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**env, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
            patch.setenv(name, value)
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def _engine(zero_stage: int, weights: dict | None = None):
    torch.manual_seed(0)
    model = Bert4Rec(tiny_config())
    if weights is not None:
        model.load_state_dict(weights)
    train = TrainConfig(zero_stage=zero_stage, epochs=1, batch_size=4, warmup_steps=3)
    return _deepspeed_engine(model, Config(train=train), world=1, steps_per_epoch=TOTAL_STEPS)


def _steps(engine, first: int, count: int) -> None:
    for step in range(first, first + count):
        torch.manual_seed(step)  # dropout, as the loop seeds it per epoch
        output = engine(*batch(seed=step))
        engine.backward(output.loss)
        engine.step()


def _weights(engine) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in engine.module.state_dict().items()}


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_a_resumed_run_takes_the_steps_the_interrupted_run_would_have(
    process_group, tmp_path, zero_stage
):
    interrupted = _engine(zero_stage)
    _steps(interrupted, 0, STEPS_BEFORE)
    decay_to(interrupted.lr_scheduler, STEPS_BEFORE + STEPS_AFTER)  # a budget's moved decay
    saved_weights, saved_rate = _weights(interrupted), interrupted.lr_scheduler.get_lr()
    resume.gather(interrupted, rank=0, world=1, device="cpu").save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {RESUME_TENSORS_FILE, RESUME_STATE_FILE}
    _steps(interrupted, STEPS_BEFORE, STEPS_AFTER)  # the uninterrupted continuation

    resumed = _engine(zero_stage, saved_weights)
    resume.apply(resumed, resume.read(tmp_path, rank=0, world=1))
    assert resumed.lr_scheduler.get_lr() == saved_rate
    _steps(resumed, STEPS_BEFORE, STEPS_AFTER)
    restarted = _engine(zero_stage, saved_weights)  # the same weights, a fresh optimizer
    restarted.lr_scheduler.step(STEPS_BEFORE)
    _steps(restarted, STEPS_BEFORE, STEPS_AFTER)

    expected = _weights(interrupted)
    gap = max((_weights(resumed)[n] - w).abs().max().item() for n, w in expected.items())
    without = max((_weights(restarted)[n] - w).abs().max().item() for n, w in expected.items())
    assert gap < 1e-6, gap  # float noise
    assert without > 1e-3, without  # what the state is for: without it the path differs
    assert resumed.lr_scheduler.get_last_lr() == interrupted.lr_scheduler.get_last_lr()


def test_another_number_of_workers_restarts_the_optimizer(process_group, tmp_path):
    engine = _engine(1)
    _steps(engine, 0, 2)
    resume.gather(engine, rank=0, world=1, device="cpu").save(tmp_path)
    assert resume.read(tmp_path, rank=0, world=2) is None
    assert resume.read(tmp_path / "none", rank=0, world=1) is None
