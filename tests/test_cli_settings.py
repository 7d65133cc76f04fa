"""What the flags set reaches the library: ``retrain``'s ``--config``, ``--gpu`` and
``--workers`` (on top of the parent version's settings), and a preset named by ``--config``
on a command that starts from a run's saved settings. Ray and the library calls are stand-ins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_dist import cli, run_layout
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.config import Config, EvalConfig


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setattr(cli.common, "init_ray", lambda *args, **kwargs: None)


def test_retrain_passes_config_then_overrides_then_flags(tmp_path, monkeypatch, capsys):
    given: list[list[str]] = []

    def retrain(registry, events, output, overrides):
        given.append(list(overrides))
        return {"candidate": None, "reason": "nothing new", "parent": "v1"}

    monkeypatch.setattr("recsys_dist.retrain.retrain", retrain)
    monkeypatch.setattr("recsys_dist.retrain.parent_version", lambda registry: None)
    (tmp_path / "events").mkdir()
    (tmp_path / "my.yaml").write_text("train: {lr: 0.01, workers: 5}\neval:\n")
    argv = ["retrain", "--registry", str(tmp_path / "r"), "--events", str(tmp_path / "events")]
    argv += ["--config", str(tmp_path / "my.yaml"), "train.epochs=7", "--workers", "3", "--gpu"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert given == [
        [
            "train.lr=0.01",
            "train.workers=5",
            "train.epochs=7",
            "train.workers=3",  # the flag wins
            "train.use_gpu=True",
        ]
    ]
    assert cli.main(argv[:5]) == 0  # no flags: nothing set beyond the parent's settings
    assert given[-1] == []


def fake_run(root: Path, eval_config: EvalConfig) -> str:
    """A run directory as far as the CLI reads it: record, saved config, an export marker."""
    run = root / "run"
    model = Path(run_layout.model_dir(str(run)))
    model.mkdir(parents=True)
    (model / STATE_FILE).write_text("{}")
    (run / run_layout.RUN_RECORD).write_text(json.dumps({run_layout.PREPARED: str(root)}))
    Config(eval=eval_config).save(run_layout.config_file(str(run)))
    return str(run)


def test_a_preset_over_a_runs_saved_settings(tmp_path, monkeypatch, capsys):
    """``evaluate --config PRESET`` reads the preset's file (not a path named PRESET) both to
    load it and to tell which saved settings it replaces."""
    seen: list[EvalConfig] = []

    def evaluate_run(run, split, eval_config, data=None, model_dir=None):
        seen.append(eval_config)
        return {"split": split}

    monkeypatch.setattr("recsys_dist.evaluation.evaluate.evaluate_run", evaluate_run)
    run = fake_run(tmp_path, EvalConfig(ks=(1, 3), sampled_negatives=9))
    code = cli.main(["evaluate", "--run", run, "--config", "short-histories", "--json"])
    assert code == 0, capsys.readouterr().err
    assert seen == [EvalConfig(ks=(1, 3), sampled_negatives=9)]  # the run's own, kept
