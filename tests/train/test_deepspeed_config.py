"""Every training field reaches the DeepSpeed config (conventions habit 2)."""

from __future__ import annotations

from recsys_dist.config import TrainConfig
from recsys_dist.train.deepspeed_config import build_deepspeed_config


def test_fields_reach_deepspeed():
    train = TrainConfig(
        batch_size=48, lr=0.0123, weight_decay=0.05, warmup_steps=7, grad_clip=0.5, zero_stage=2
    )
    ds = build_deepspeed_config(train, world_size=3, total_steps=100, bf16=True)
    assert ds["train_micro_batch_size_per_gpu"] == 48 and ds["train_batch_size"] == 144
    assert ds["optimizer"]["params"]["lr"] == 0.0123
    assert ds["optimizer"]["params"]["weight_decay"] == 0.05
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 7
    assert ds["scheduler"]["params"]["total_num_steps"] == 100
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] is True


def test_cpu_runs_fp32_and_short_runs_keep_a_valid_schedule():
    ds = build_deepspeed_config(TrainConfig(warmup_steps=100), 1, total_steps=10, bf16=False)
    assert ds["bf16"]["enabled"] is False
    params = ds["scheduler"]["params"]
    assert params["warmup_num_steps"] < params["total_num_steps"]


def test_no_warm_up_is_the_least_deepspeed_takes():
    """A warm-started candidate trains without warm-up (``retrain.warmup_steps=0``)."""
    ds = build_deepspeed_config(TrainConfig(warmup_steps=0), 1, total_steps=10, bf16=False)
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 1
