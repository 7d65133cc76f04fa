"""A warm start through the real training loop: one epoch from the shared trained run."""

from __future__ import annotations

import json

from recsys_dist import run_layout


def test_one_warm_epoch_keeps_what_the_parent_learned(trained_run, tmp_path, cli_json):
    """A fresh model after one epoch is far below the parent (epoch 10 of 30 reaches
    0.32-0.40 of its ~0.5); one epoch from the parent's weights stays within 10% of them."""
    parent = trained_run.summary["best_metrics"]["valid_ndcg@10"]
    run = tmp_path / "warm"
    cli_json(
        *("train", "--data", str(trained_run.prepared), "--output", str(run), "--workers", "1"),
        *trained_run.model,
        *("train.epochs=1", "train.warmup_steps=1"),
        f"train.init_from={run_layout.model_dir(trained_run.run)}",
    )
    (first,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert first["valid_ndcg@10"] > 0.9 * parent, (first["valid_ndcg@10"], parent)
