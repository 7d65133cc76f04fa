"""The DeepSpeed config, built in one place from our typed config."""

from __future__ import annotations

from typing import Any

from recsys_dist.config import TrainConfig


def build_deepspeed_config(
    train: TrainConfig, world_size: int, total_steps: int, bf16: bool
) -> dict[str, Any]:
    """AdamW with linear warm-up then linear decay, clipping, ZeRO, bf16 only on GPU.

    ``torch_adam`` keeps the optimizer portable: DeepSpeed's fused Adam needs CUDA.
    """
    # DeepSpeed needs at least one warm-up step (and takes two): 0 means "start at full rate".
    warmup = max(1, min(train.warmup_steps, total_steps // 2))
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": train.batch_size * world_size,
        "gradient_clipping": train.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                "torch_adam": True,
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": train.lr,
                "warmup_num_steps": warmup,
                "total_num_steps": max(total_steps, warmup + 1),
                "warmup_type": "linear",
            },
        },
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
