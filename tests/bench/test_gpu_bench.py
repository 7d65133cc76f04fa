"""bench/gpu.py end to end: the CPU smoke path (slow tier) and the real GPU path (gpu)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.bench.scripts import load_bench

KEYS = {
    *("benchmark", "date", "smoke", "device", "gpu_name", "machine", "torch", "overrides"),
    *("dataset", "dataset_path", "dataset_note", "workers", "bf16", "batch_size", "max_len"),
    *("hidden_size", "num_layers", "intermediate_size", "objective", "time_budget_s"),
    *("prepare_s", "vocab_size", "train_rows", "train_wall_s", "epochs", "best_epoch"),
    *("best_valid_ndcg@10", "train_seq_per_s", "peak_gpu_memory_mib", "gpu_memory_baseline_mib"),
    *("gpu_memory_method", "target_ndcg@10", "time_to_target_s", "time_to_target_epoch"),
    *("flops_per_seq", "achieved_tflops", "peak_tflops", "mfu", "serve_concurrency"),
    *("serve_seconds", "serve_replica_gpus", "serve_ingress", "serve_requests", "serve_ok"),
    *("serve_rps", "serve_p50_ms", "serve_p99_ms", "total_s"),
}
POSITIVE = (
    *("vocab_size", "train_rows", "train_wall_s", "epochs", "best_epoch", "train_seq_per_s"),
    *("flops_per_seq", "achieved_tflops", "serve_requests", "serve_rps", "serve_p50_ms"),
)


def _run(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "out" / "gpu.json"
    bench = load_bench("gpu")
    assert bench.main(["--out", str(out), "--workdir", str(tmp_path / "work"), *argv]) == 0
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    for key in POSITIVE:
        assert result[key] > 0, key
    assert result["serve_ok"] == result["serve_requests"]
    assert result["serve_p99_ms"] >= result["serve_p50_ms"]
    assert 0 <= result["best_valid_ndcg@10"] <= 1
    return result


@pytest.mark.slow
def test_smoke_path_on_cpu(ray_session, tmp_path):
    argv = ["--smoke", "--target", "0", "--concurrency", "2", "--serve-seconds", "2"]
    result = _run(tmp_path, *argv)
    assert result["device"] == "cpu" and result["smoke"] and not result["bf16"]
    assert result["dataset"] == "synthetic" and result["dataset_note"].startswith("smoke")
    gpu_only = ("gpu_name", "peak_gpu_memory_mib", "gpu_memory_baseline_mib", "mfu")
    assert all(result[key] is None for key in (*gpu_only, "peak_tflops"))
    # A target of 0 is reached at the first validation: its epoch and the loop's clock.
    assert result["time_to_target_epoch"] == 1 and result["time_to_target_s"] > 0


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_path_on_gpu(ray_session, tmp_path):
    argv = ["--data", "synthetic", "--synthetic-users", "500", "--time-budget-s", "20"]
    result = _run(tmp_path, *argv, "--serve-seconds", "3", "train.epochs=3")
    assert result["device"] == "cuda" and result["bf16"] and result["serve_replica_gpus"] == 1
    assert 0 < result["mfu"] < 1
    if shutil.which("nvidia-smi"):
        assert result["peak_gpu_memory_mib"] > 0 and result["gpu_name"]


def test_flops_per_sequence_follows_the_documented_formula():
    from recsys_dist.config import load_config

    bench = load_bench("gpu")
    overrides = ["data.max_len=10", "model.hidden_size=8", "model.intermediate_size=16"]
    overrides += ["model.num_layers=2", "train.mask_prob=0.5", "train.last_item_mask_prob=0"]
    encoder = 2 * (8 * 10 * 64 + 4 * 100 * 8 + 4 * 10 * 8 * 16)
    head = 5 * (2 * 64 + 2 * 8 * 100)  # 5 labelled positions, 100 items
    cloze = load_config(None, [*overrides, "model.objective=cloze"])
    assert bench.train_flops_per_sequence(cloze, 100) == 3 * (encoder + head)
    causal = load_config(None, [*overrides, "model.objective=causal"])
    encoder = 2 * (8 * 9 * 64 + 4 * 81 * 8 + 4 * 9 * 8 * 16)
    head = 9 * (2 * 64 + 2 * 8 * 100)
    assert bench.train_flops_per_sequence(causal, 100) == 3 * (encoder + head)


def test_time_to_target_is_the_first_validation_reaching_it():
    bench = load_bench("gpu")
    history = [
        {"epoch": 1, "elapsed_s": 5.0, "valid_ndcg@10": 0.1},
        {"epoch": 2, "elapsed_s": 9.5, "valid_ndcg@10": 0.16},
        {"epoch": 3, "elapsed_s": 14.0, "valid_ndcg@10": 0.15},
    ]
    assert bench.time_to_target(history, 0.15) == (9.5, 2)
    assert bench.time_to_target(history, 0.2) == (None, None)
