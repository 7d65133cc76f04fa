"""Habit 2 for the commands that use a trained run: ``evaluate``, ``recommend`` and ``score``
start from the settings the run was trained with, ``--config``, ``key=value`` overrides and
flags win over them, and non-default values reach the library calls.

The run is tiny and untrained (an export of random weights), so this runs in seconds; only the
``recommend`` test starts Ray (the shared session), since grouping histories is Ray tasks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recsys_dist import cli, run_layout, schema
from recsys_dist.checkpoint import save_checkpoint
from recsys_dist.config import Config, DataConfig, EvalConfig, ModelConfig
from recsys_dist.data import grouping
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.model import Bert4Rec, Bert4RecConfig

ITEMS = [f"i{k}" for k in range(6)]


def tiny_run(root: Path, eval_config: EvalConfig | None = None, data: DataConfig | None = None):
    """A run directory as ``train`` leaves it, with an untrained 1-layer model."""
    vocab = Vocabulary.from_counts(pa.array(ITEMS), np.arange(len(ITEMS), 0, -1))
    vocab.save(str(root / schema.VOCAB_FILE))
    model_config = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    model = Bert4Rec(Bert4RecConfig.from_model_config(model_config, vocab.size, max_len=8))
    run = root / "run"
    state = {"metrics": {"epoch": 1}}
    save_checkpoint(run_layout.model_dir(run), model, str(root / schema.VOCAB_FILE), state)
    Config(model=model_config, eval=eval_config or EvalConfig()).save(run_layout.config_file(run))
    prepared_with = {run_layout.DATA_SETTINGS: dataclasses.asdict(data or DataConfig())}
    run_layout.write_run_record(run, str(root / "prepared"), prepared_with)
    return run


@pytest.fixture
def calls(monkeypatch):
    """Stand-ins for Ray and the library functions: what each command passed them."""
    seen: dict[str, list] = {"evaluate": [], "score": []}

    def evaluate_run(run, split, eval_config, data=None, model_dir=None):
        seen["evaluate"].append(eval_config)
        return {"split": split}

    def score_prepared(model, data, output, k, exclude_seen=True):
        seen["score"].append(exclude_seen)
        return {"users": 0}

    monkeypatch.setattr(cli.common, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr("recsys_dist.evaluation.evaluate.evaluate_run", evaluate_run)
    monkeypatch.setattr("recsys_dist.inference.batch.score_prepared", score_prepared)
    return seen


def test_evaluate_uses_the_runs_eval_settings_under_flags_and_overrides(tmp_path, calls, cli_json):
    saved = EvalConfig(ks=(1, 3), exclude_seen=False, sampled_negatives=9, sampling="popularity")
    run = str(tiny_run(tmp_path, eval_config=saved))
    cli_json("evaluate", "--run", run)
    assert calls["evaluate"][-1] == saved
    cli_json("evaluate", "--run", run, "--sampled", "0", "--sampling", "uniform", "eval.seed=4")
    assert calls["evaluate"][-1] == dataclasses.replace(
        saved, sampled_negatives=0, sampling="uniform", seed=4
    )
    given = tmp_path / "given.yaml"
    given.write_text(yaml.safe_dump({"eval": {"ks": [7], "batch_size": 5}}))
    cli_json("evaluate", "--run", run, "--config", str(given))
    assert calls["evaluate"][-1] == dataclasses.replace(saved, ks=(7,), batch_size=5)
    (tmp_path / "other").mkdir()
    default_run = str(tiny_run(tmp_path / "other"))
    cli_json("evaluate", "--run", default_run, "--keep-seen")
    assert calls["evaluate"][-1] == EvalConfig(exclude_seen=False)


def test_score_excludes_seen_items_as_the_run_was_evaluated(tmp_path, calls, cli_json):
    output = str(tmp_path / "scores.parquet")
    keeps_seen = str(tiny_run(tmp_path, eval_config=EvalConfig(exclude_seen=False)))
    cli_json("score", "--run", keeps_seen, "--output", output)
    (tmp_path / "other").mkdir()
    default_run = str(tiny_run(tmp_path / "other"))
    cli_json("score", "--run", default_run, "--output", output)
    cli_json("score", "--run", default_run, "--output", output, "--keep-seen")
    cli_json("score", "--run", default_run, "--output", output, "eval.exclude_seen=false")
    assert calls["score"] == [False, True, False, False]


def test_recommend_groups_histories_with_the_runs_data_settings(
    ray_session, tmp_path, monkeypatch, cli_json
):
    """The run's data was prepared keeping 3 events per user: recommend keeps 3 too, so the
    two oldest (unknown) items of a 5-event user never reach the model; an override reaches
    the grouping as well."""
    run = tiny_run(tmp_path, data=DataConfig(max_len=3, max_history=3, dedup=False))
    histories = tmp_path / "histories"
    histories.mkdir()
    events = {
        schema.USER_ID: ["u"] * 5 + ["v"] * 2,
        schema.ITEM_ID: ["new1", "new2", "i0", "i1", "i2", "i3", "new3"],
        schema.TIMESTAMP: [1, 2, 3, 4, 5, 1, 2],
    }
    pq.write_table(pa.table(events), histories / "part-0.parquet")
    specs = []
    spec_for = grouping.spec_for
    monkeypatch.setattr(grouping, "spec_for", lambda *args: specs.append(args) or spec_for(*args))
    out = tmp_path / "recommended.parquet"
    result = cli_json(
        *("recommend", "--run", str(run), "--histories", str(histories), "--k", "2"),
        *("--output", str(out), "data.bucket_rows=7"),
    )
    assert [spec[1:] for spec in specs] == [(7, 3, False)]  # bucket_rows, max_history, dedup
    assert result["users"] == 2 and result["rows"] == 4
    assert result["unknown_items_ignored"] == 1  # v's new3; u's new1, new2 were cut
    assert pq.read_table(out).num_rows == 4
