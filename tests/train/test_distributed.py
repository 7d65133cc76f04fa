"""Distributed training, checked: every training row once per epoch, and 2 workers ≡ 1 worker.

The parity data's training split has an odd number of rows, so shards cannot be equal: Ray's
default split would drop a row per epoch, and without the loop's lock-step the gloo all-reduce
would hang.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.config import OBJECTIVES, DataConfig, ModelConfig, load_config
from recsys_dist.data.prepare import prepare_dataset
from recsys_dist.data.synthetic import generate_dataset
from recsys_dist.inference.predictor import Recommender
from recsys_dist.train.batches import CHECKSUM_MODULUS, ShardBatches, sequence_checksum
from recsys_dist.train.data_config import CoveringDataConfig
from recsys_dist.train.trainer import train

TINY = [
    "data.max_len=20",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "train.lr=0.003",
    "train.warmup_steps=20",
]


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    """1001 users with real signal (drifting category preferences): 1001 training rows."""
    root = tmp_path_factory.mktemp("distributed")
    generate_dataset(
        str(root / "raw"), users=1001, items=60, categories=4, seed=0, events_per_user=(5, 30)
    )
    manifest = prepare_dataset(str(root / "raw"), str(root / "prepared"), DataConfig(max_len=20))
    assert manifest["counts"]["train_rows"] % 2 == 1, "the test needs shards that cannot be equal"
    return root / "prepared", manifest


def train_run(prepared_dir, run_dir, *overrides: str) -> list[dict]:
    train(str(prepared_dir), str(run_dir), load_config(None, [*TINY, *overrides]))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checksum_ignores_order_and_sees_a_missing_or_repeated_row():
    batch = {
        schema.USER_ID: ["a", "a", "b"],
        schema.TIMESTAMPS: [[1, 2, 3], [11, 12], [5]],
    }
    rows = [{name: column[i] for name, column in batch.items()} for i in range(3)]
    as_batch = lambda rs: {name: [r[name] for r in rs] for name in batch}  # noqa: E731
    whole = sequence_checksum(batch)
    assert 0 <= whole < CHECKSUM_MODULUS
    assert sequence_checksum(as_batch(rows[::-1])) == whole
    halves = sequence_checksum(as_batch(rows[:1])) + sequence_checksum(as_batch(rows[1:]))
    assert halves % CHECKSUM_MODULUS == whole
    assert sequence_checksum(as_batch(rows[:2])) != whole
    assert sequence_checksum(as_batch([*rows, rows[0]])) != whole


class FakeShard:
    """A ``DataIterator`` stand-in that counts its streamed passes."""

    def __init__(self, rows: int) -> None:
        self.rows, self.passes = rows, 0

    def iter_batches(self, batch_size, **_):
        self.passes += 1
        for start in range(0, self.rows, batch_size):
            yield {
                schema.USER_ID: [str(i) for i in range(start, min(start + batch_size, self.rows))]
            }


@pytest.mark.parametrize("others_fit", [True, False])
def test_a_shard_replays_from_memory_only_if_every_rank_agrees(others_fit):
    shard = FakeShard(rows=10)
    batches = ShardBatches(shard, 4, cache_rows=100, shuffle=True, agree=lambda f: f and others_fit)
    for epoch in range(3):
        rows = [u for batch in batches.epoch(seed=epoch) for u in batch[schema.USER_ID]]
        assert sorted(rows) == sorted(str(i) for i in range(10))
    assert shard.passes == (1 if others_fit else 3)


def test_covering_split_drops_no_row_and_balances_to_a_block(ray_session):
    import ray

    config = CoveringDataConfig([schema.TRAIN_SPLIT], rows_per_block=16)
    datasets = {"train": ray.data.range(301), "valid": ray.data.range(5)}
    shards = config.configure(datasets, world_size=2, worker_handles=None, worker_node_ids=None)
    for _ in range(2):  # epochs: a split restarts on every pass
        seen: dict[int, list[int]] = {}

        def consume(rank: int, seen: dict[int, list[int]]) -> None:
            batches = shards[rank]["train"].iter_batches(batch_size=16, batch_format="numpy")
            seen[rank] = [int(i) for batch in batches for i in batch["id"]]

        threads = [threading.Thread(target=consume, args=(rank, seen)) for rank in (0, 1)]
        [thread.start() for thread in threads]
        [thread.join() for thread in threads]
        assert sorted(seen[0] + seen[1]) == list(range(301))  # disjoint and complete
        assert abs(len(seen[0]) - len(seen[1])) <= 16
    assert [shard["valid"].materialize().count() for shard in shards] == [5, 5]


@pytest.mark.parametrize("preserve_order", [True, False])
@pytest.mark.parametrize("name", [schema.TRAIN_SPLIT, schema.VALID_SPLIT])
def test_blocks_keep_file_order_unless_told_otherwise(ray_session, preserve_order, name):
    """A one-worker shard of the split training data, and the whole validation data every
    worker reads, arrive in file order even when the first block is slowest, so a seeded run
    (its validation figures included) repeats; without ``preserve_order`` every row still
    arrives, in any order.

    (Without it, on 2 CPUs, rows 8-63 came first in each of several runs on 2026-11-29.)"""
    import ray

    def first_block_late(batch: dict) -> dict:  # local: Ray workers cannot import tests/
        if batch["id"][0] == 0:
            time.sleep(2.0)  # a slow read, not a synchronisation: the other blocks overtake it
        return batch

    config = CoveringDataConfig([schema.TRAIN_SPLIT], 16, preserve_order=preserve_order)
    late = ray.data.range(64, override_num_blocks=8).map_batches(first_block_late)
    (shard,) = config.configure({name: late}, 1, worker_handles=None, worker_node_ids=None)
    rows = [int(i) for b in shard[name].iter_batches(batch_size=16) for i in b["id"]]
    if preserve_order:
        assert rows == list(range(64))
    else:
        assert sorted(rows) == list(range(64))


@pytest.mark.slow
def test_replayed_epochs_train_on_every_sequence_exactly_once(trained_run, train_checksum):
    """The shared 2-worker run (tests/conftest.py) streamed epoch 1 and replayed its shards
    from worker memory after it: epochs 10, 20 and 30 still cover every training row once.
    Streamed epochs are checked across two nodes on S3 (tests/e2e/test_s3.py)."""
    lines = [
        json.loads(line) for line in (trained_run.run / "metrics.jsonl").read_text().splitlines()
    ]
    expected = train_checksum(str(trained_run.prepared))
    assert [line["epoch"] for line in lines] == [10, 20, 30]
    for line in lines:
        assert line["train_sequences"] == trained_run.manifest["counts"]["train_rows"]
        assert line["train_checksum"] == expected


@pytest.mark.slow
def test_two_workers_reach_what_one_worker_reaches(prepared, tmp_path):
    """Same data, lr, epochs, seed and effective batch (1 x 32 vs 2 x 16): same NDCG@10.

    Both runs use the objective the shared run (2 workers) does not, with the event-age bias,
    so this also checks that they learn through the real loop and that the export says so.

    Noise on this data and config (30 epochs, final valid NDCG@10, the cloze objective, without
    the age bias): seeds 0/1/2 gave 1 worker 0.543 / 0.525 / 0.530 and 2 workers 0.520 / 0.545
    / 0.546; a CI run on 2026-11-29 gave 0.543 vs 0.488 with seed 0 (the 2-worker run's data
    order depends on which rank's block arrives first, so the same seed does not repeat it).
    Over those seven runs the pooled sd is ~0.02, a difference of two runs ~0.028; the
    tolerance, 0.08, is 3 sd of that. The floor of 0.45 checks that both runs learned (epoch
    10 of a full run: 0.32-0.40; with the age bias, 1 worker, CI 2026-12-01: above 0.45); the
    exact-cover test above checks that the two workers together see every training sequence
    once.
    """
    prepared_dir, _ = prepared
    other = next(o for o in OBJECTIVES if o != ModelConfig().objective)
    common = [f"model.objective={other}", "model.use_event_ages=true", "train.seed=0"]
    # Without the rating head: its noise figures above predate it, and with it (cloze, the
    # generated 10 % rated purchases) both runs reached only ~0.26 on CI 2026-12-02 (issue 16).
    common += ["model.rating_head=false"]
    common += ["train.epochs=30", "train.eval_every=30"]
    one = train_run(
        prepared_dir, tmp_path / "one", *common, "train.workers=1", "train.batch_size=32"
    )
    two = train_run(
        prepared_dir, tmp_path / "two", *common, "train.workers=2", "train.batch_size=16"
    )
    assert one[-1]["step"] == two[-1]["step"]  # same number of optimizer steps
    ndcg_one, ndcg_two = one[-1]["valid_ndcg@10"], two[-1]["valid_ndcg@10"]
    assert min(ndcg_one, ndcg_two) > 0.45, (ndcg_one, ndcg_two)  # both learned
    assert abs(ndcg_one - ndcg_two) < 0.08, (ndcg_one, ndcg_two)
    model_dir = run_layout.model_dir(tmp_path / "two")
    exported = json.loads(Path(model_dir, "config.json").read_text())
    assert exported["objective"] == other and exported["use_event_ages"] is True
    recommender = Recommender(str(model_dir), k=5)  # builds the age inputs from the export
    item = recommender.vocab.to_item_ids(np.array([2, 3, 4])).to_pylist()
    found = recommender.recommend([item], [np.array([0, 60, 7200])])
    assert len(found.item_ids[0]) == 5
