"""The retraining gate's rule, and the checks a turn makes before it takes any event (the
whole loop runs in tests/e2e/test_loop.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema
from recsys_dist.config import ConfigError, RetrainConfig, load_config
from recsys_dist.data.prepared import load_manifest
from recsys_dist.errors import MissingInputError, UserInputError
from recsys_dist.registry import Registry, Version
from recsys_dist.retrain import PREPARED_DIR, fine_tuning, gate, retrain


@pytest.mark.parametrize(
    ("candidate", "current", "promoted"),
    [(0.30, 0.30, True), (0.296, 0.30, True), (0.294, 0.30, False), (0.40, 0.30, True)],
)
def test_the_gate_tolerates_a_small_loss_and_no_more(candidate, current, promoted):
    decision, reason = gate({"ndcg@10": candidate}, {"ndcg@10": current}, RetrainConfig())
    assert decision is promoted
    assert f"candidate ndcg@10 {candidate:.4f} vs current {current:.4f}" in reason


@pytest.mark.parametrize(("candidate", "promoted"), [(0.109, False), (0.111, True)])
def test_the_gate_keeps_out_a_candidate_that_barely_beats_popularity(candidate, promoted):
    """Even against a current version that scores worse (the newest rows are noise for
    both), a candidate must beat the most-popular list by retrain.min_lift (10 %)."""
    scored = {"ndcg@10": candidate, "baseline_popularity": {"ndcg@10": 0.1}}
    decision, reason = gate(scored, {"ndcg@10": 0.05}, RetrainConfig())
    assert decision is promoted
    assert ("most-popular list scores 0.1000" in reason) is not promoted
    with pytest.raises(ConfigError, match="retrain.min_lift"):
        RetrainConfig(min_lift=-0.1)


def test_the_gate_names_a_metric_that_was_not_evaluated():
    with pytest.raises(MissingInputError, match="eval.ks"):
        gate({"ndcg@10": 0.3}, {"ndcg@10": 0.3}, RetrainConfig(metric="ndcg@50"))
    with pytest.raises(ConfigError, match="retrain.metric"):
        RetrainConfig(metric="auc")


def test_the_job_script_is_the_retrain_command_with_one_json_line(tmp_path):
    """jobs/retrain.py exits as the command does: a registry without a current version is
    bad input, one line, exit 2."""
    events = tmp_path / "events"
    events.mkdir()
    job = Path(__file__).resolve().parents[1] / "jobs" / "retrain.py"
    argv = [sys.executable, str(job), "--registry", str(tmp_path / "r"), "--events", str(events)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: ") and "no current version" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _parent(data_end: int | None) -> Version:
    span = None if data_end is None else [data_end - 100, data_end]
    return Version("v1", {"data": {"event_time_range": span}}, "/registry/versions/v1")


def test_the_candidate_fine_tunes_from_the_parent_at_the_turns_rate():
    config = load_config(None, ["train.lr=0.001", "train.warmup_steps=50", "retrain.epochs=3"])
    tuned = fine_tuning(config, _parent(1_000))
    assert (tuned.init_from, tuned.epochs) == ("/registry/versions/v1/model", 3)
    assert tuned.lr == 0.001 * RetrainConfig().lr_scale and tuned.warmup_steps == 0
    assert tuned.batch_size == config.train.batch_size  # the rest is the parent's


@pytest.mark.parametrize(
    ("replay", "data_end", "active_since"),
    [(0.2, 1_000, 1_000), (1.0, 1_000, 0), (0.2, None, 0)],
)
def test_the_candidate_trains_the_users_active_since_the_parents_data(
    replay, data_end, active_since
):
    """A replay share below 1 focuses the turn on the users with events after the parent's
    data; every user when it is 1, or when the parent's data end was never recorded."""
    config = load_config(None, [f"retrain.replay={replay}"])
    tuned = fine_tuning(config, _parent(data_end))
    assert (tuned.active_since, tuned.replay_share) == (active_since, replay)


@pytest.fixture
def registered(tiny_run, tmp_path) -> Registry:
    """A registry whose current version is the tiny run (its data prepared at max_len 10)."""
    registry = Registry(str(tmp_path / "registry"))
    registry.promote(registry.register(str(tiny_run.run)).id)
    return registry


def _turn(registry: Registry, tmp_path: Path, *overrides: str) -> None:
    events = tmp_path / "event_log" / schema.EVENTS_DIR
    events.mkdir(parents=True)
    pq.write_table(
        pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": [1]}), events / "a.parquet"
    )
    retrain(registry.root, [str(events.parent)], str(tmp_path / "work"), overrides)


def _taken(tmp_path: Path) -> list[str]:
    return load_manifest(str(tmp_path / "work" / PREPARED_DIR))["input_files"]


def test_a_turn_takes_the_data_settings_from_its_dataset_and_refuses_others_first(
    registered, tiny_run, tmp_path
):
    """An override that disagrees with the data is refused before any event is taken (a
    turn that took them and failed would leave them to no later turn)."""
    with pytest.raises(ConfigError, match="^data.max_len=50 disagrees with the dataset's 10 "):
        _turn(registered, tmp_path, "data.max_len=50")
    assert _taken(tmp_path) == load_manifest(str(tiny_run.prepared))["input_files"]


def test_a_turn_refuses_a_parent_whose_model_reads_another_length_first(
    registered, tiny_run, tmp_path
):
    """A parent trained before ``data.*`` came from the dataset may read more events than its
    windows hold: the candidate, built at the data's length, cannot start from it."""
    exported = Path(registered.current().path) / "model" / "config.json"
    exported.write_text(json.dumps({**json.loads(exported.read_text()), "max_len": 50}))
    with pytest.raises(
        UserInputError,
        match=r"reads 50 events \(max_len\), this data was prepared at data.max_len=10",
    ):
        _turn(registered, tmp_path)
    assert _taken(tmp_path) == load_manifest(str(tiny_run.prepared))["input_files"]
