"""The GPU path: NCCL, bf16 and one GPU per worker. Runs only where CUDA is present."""

from __future__ import annotations

import json

import pytest
import torch

from recsys_dist import cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_forward_backward_on_gpu():
    from recsys_dist.config import ModelConfig
    from recsys_dist.model import Bert4Rec, Bert4RecConfig

    config = Bert4RecConfig.from_model_config(ModelConfig(hidden_size=32), 50, max_len=10)
    model = Bert4Rec(config).cuda()
    items = torch.randint(2, 50, (4, 10), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(items, torch.zeros_like(items), items)
    output.loss.backward()
    assert torch.isfinite(output.loss)


@pytest.mark.slow
def test_train_on_gpu_with_deepspeed_bf16_zero2(ray_session, tmp_path, capsys):
    raw, prepared, run = tmp_path / "raw", tmp_path / "p", tmp_path / "run"
    generate = ["generate", "--output", str(raw), "--num-users", "200", "--num-items", "60"]
    assert cli.main(generate) == 0
    assert cli.main(["prepare", "--data", str(raw), "--output", str(prepared)]) == 0
    workers = min(2, torch.cuda.device_count())
    code = cli.main(
        [
            "train",
            "--data",
            str(prepared),
            "--output",
            str(run),
            "--gpu",
            "--workers",
            str(workers),
            "--json",
            "train.zero_stage=2",
            "train.epochs=4",
            "train.eval_every=2",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_metrics"]["valid_ndcg@10"] > 0
