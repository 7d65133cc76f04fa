"""Settings travel with the data they shaped (conventions habit 19).

``train`` and ``retrain`` take ``data.*`` from the prepared dataset's manifest: a ``--config``
(a preset too) or an override that disagrees is one line, exit 2, before Ray starts; ``train``
refuses a library caller's config that disagrees, before it writes or deletes anything; a
warm start whose parent cannot fit is refused before any worker starts. A retraining turn over
a parent trained on data prepared at a length other than the default is tests/e2e/test_loop.py's
(the shared run is prepared at max_len 20).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from recsys_dist import cli, run_layout, schema
from recsys_dist.config import Config, ConfigError, DataConfig
from recsys_dist.errors import UserInputError
from recsys_dist.train import trainer
from recsys_dist.train.trainer import dataset_config, train


class _Reached(Exception):
    """Raised where a command goes on past the checks: the test stops there."""


def _prepared(path: Path, data: DataConfig, **manifest) -> Path:
    """A prepared dataset as far as the checks before training read one: its manifest."""
    path.mkdir(parents=True)
    record = {"config": dataclasses.asdict(data), **manifest}
    (path / schema.MANIFEST_FILE).write_text(json.dumps(record))
    return path


@pytest.fixture
def trained_with(monkeypatch):
    """The CLI runs up to ``train``, which records the config it was given and stops."""
    given: list[Config] = []

    def stop(prepared, run, config, overwrite=False):
        given.append(config)
        raise _Reached

    monkeypatch.setattr(cli.common, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(trainer, "train", stop)
    return given


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the command started Ray before checking its data settings")

    monkeypatch.setattr(cli.common, "init_ray", refuse)


def _train(data: Path, tmp_path: Path, *more: str) -> list[str]:
    return ["train", "--data", str(data), "--output", str(tmp_path / "run"), *more]


def test_train_takes_the_data_settings_from_the_dataset(tmp_path, trained_with):
    """No data.* given: the dataset's, whatever the defaults; the rest as given."""
    at_30 = DataConfig(max_len=30, window_stride=5, holdout_events=2)
    data = _prepared(tmp_path / "prepared", at_30)
    with pytest.raises(_Reached):
        cli.main(_train(data, tmp_path, "--workers", "1", "model.hidden_size=32"))
    with pytest.raises(_Reached):  # an override that agrees is no error
        cli.main(_train(data, tmp_path, "data.max_len=30"))
    assert [config.data for config in trained_with] == [at_30, at_30]
    assert trained_with[0].model.hidden_size == 32 and trained_with[0].train.workers == 1


@pytest.mark.parametrize(
    ("prepared_with", "given", "expected"),
    [
        (
            DataConfig(max_len=30),
            ["data.max_len=50"],
            "data.max_len=50 disagrees with the dataset's 30 ",
        ),
        (  # the preset for long histories, on data prepared at the defaults
            DataConfig(),
            ["--config", "long-histories"],
            "data.max_len=200 disagrees with the dataset's 50, data.window_stride=100 with its 10 ",
        ),
    ],
    ids=["override", "preset"],
)
def test_a_data_setting_that_disagrees_with_the_dataset_is_one_line_exit_2(
    tmp_path, capsys, no_ray, prepared_with, given, expected
):
    data = _prepared(tmp_path / "prepared", prepared_with)
    assert cli.main(_train(data, tmp_path, *given)) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {expected}(prepared into {data})"), err
    assert "prepare again with it" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_preset_agrees_with_data_prepared_with_it(tmp_path, trained_with):
    """``prepare --config long-histories`` then ``train --config long-histories``: what
    ``prepare``'s next-step line suggests."""
    long = DataConfig(max_len=200, window_stride=100)
    data = _prepared(tmp_path / "prepared", long)
    with pytest.raises(_Reached):
        cli.main(_train(data, tmp_path, "--config", "long-histories"))
    assert trained_with[0].data == long and trained_with[0].train.eval_every == 3


def test_a_library_caller_gets_the_same_refusal_and_nothing_is_written_or_deleted(tmp_path):
    """``train`` with a config built by hand (the defaults, max_len 50) on data prepared at
    30: refused before the run is started, and before --overwrite deletes the old one."""
    data = _prepared(tmp_path / "prepared", DataConfig(max_len=30))
    message = "^data.max_len=50 disagrees with the dataset's 30 "
    with pytest.raises(ConfigError, match=message):
        train(str(data), str(tmp_path / "run"), Config())
    assert not (tmp_path / "run").exists()
    old = tmp_path / "old"
    run_layout.write_run_record(str(old), str(data), {"data_hash": "h"})
    (old / run_layout.METRICS_FILE).write_text('{"epoch": 1}\n')
    with pytest.raises(ConfigError, match=message):
        train(str(data), str(old), Config(), overwrite=True)
    assert (old / run_layout.METRICS_FILE).exists()
    assert dataset_config(str(data)).data == DataConfig(max_len=30)  # the way to build one


def _model_of(run) -> list[str]:
    """Overrides for a model of the tiny run's shape (``tiny_run``)."""
    return [f"model.{k}={json.dumps(v)}" for k, v in dataclasses.asdict(run.config.model).items()]


def test_a_warm_start_of_another_shape_is_refused_before_ray_train_starts(
    tiny_run, tmp_path, monkeypatch
):
    def no_trainer(*args, **kwargs):
        raise AssertionError("Ray Train started before the warm start was checked")

    monkeypatch.setattr(trainer, "build_trainer", no_trainer)
    parent = run_layout.model_dir(tiny_run.run)  # hidden_size 16, max_len 10
    warm = [*_model_of(tiny_run), "train.workers=1", f"train.init_from={parent}"]
    wider = dataset_config(str(tiny_run.prepared), None, [*warm, "model.hidden_size=32"])
    shapes = r"the parent's shape \(10, 16\) differs from \(10, 32\)"
    with pytest.raises(UserInputError, match=f"^train.init_from {parent}: .*{shapes}"):
        train(str(tiny_run.prepared), str(tmp_path / "run"), wider)
    manifest = json.loads((tiny_run.prepared / schema.MANIFEST_FILE).read_text())
    longer = _prepared(
        tmp_path / "longer",
        DataConfig(**{**manifest["config"], "max_len": 12}),
        vocab_size=manifest["vocab_size"],
    )
    config = dataset_config(str(longer), None, warm)
    lengths = r"reads 10 events \(max_len\), this data was prepared at data.max_len=12"
    with pytest.raises(UserInputError, match=lengths):
        train(str(longer), str(tmp_path / "run"), config)
    assert not (tmp_path / "run").exists()
