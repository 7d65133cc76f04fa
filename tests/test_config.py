"""Config loading: YAML, key=value overrides, strict keys and types."""

from __future__ import annotations

import dataclasses

import pytest

from recsys_dist.config import Config, ConfigError, load_config, preset_for, presets


def test_defaults_load_without_a_file():
    config = load_config()
    assert config == Config()
    assert config.data.max_len == 50 and config.data.split == "loo"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 32\n  num_heads: 4\ntrain:\n  lr: 0.01\n")
    config = load_config(path, ["train.lr=3e-4", "eval.ks=[1,5]", "model.use_time_gaps=false"])
    assert config.model.hidden_size == 32 and config.model.num_heads == 4
    assert config.train.lr == pytest.approx(3e-4)
    assert config.eval.ks == (1, 5)
    assert config.model.use_time_gaps is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key"),
        ("trian.lr=1", "unknown config section"),
        ("train.epochs=ten", "train.epochs must be int"),
        ("train.epochs=1.5", "train.epochs must be int"),
        ("model.use_time_gaps=3", "must be bool"),
        ("data.split=random", "data.split"),
        ("train.zero_stage=3", "zero_stage"),
        ("model.hidden_size=33", "divisible"),
        ("lr=1", "section.key=value"),
    ],
)
def test_bad_keys_and_values_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["train.epochs=7", "data.window_stride=3", "eval.ks=[10]"])
    config.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_a_preset_is_a_config_file_chosen_by_name_and_overrides_still_win():
    assert {"long-histories", "short-histories"} <= set(presets())
    long = load_config("long-histories", ["train.epochs=7"])
    assert (long.data.max_len, long.data.window_stride, long.train.epochs) == (200, 100, 7)
    assert load_config("long-histories", ["data.max_len=120"]).data.max_len == 120


def test_the_short_histories_preset_is_the_defaults_but_for_sparse_dropout():
    """It names the kind the defaults were chosen for; if a default moves, so must it. Its
    one difference is SASRec's dropout for sparse logs."""
    short, defaults = load_config("short-histories"), load_config()
    assert short.model.dropout == 0.5 != defaults.model.dropout
    assert short == dataclasses.replace(
        defaults, model=dataclasses.replace(defaults.model, dropout=0.5)
    )


@pytest.mark.parametrize(
    ("events", "users", "expected"),
    [
        (198_502, 22_363, "short-histories"),  # Amazon Beauty: 9 events a user
        (999_611, 6_040, "long-histories"),  # MovieLens-1M: 165
        (99_900, 1_000, "short-histories"),  # just under the line (100)
        (0, 0, None),  # nothing to judge
    ],
)
def test_the_preset_follows_the_mean_history(events, users, expected):
    assert preset_for(events, users) == expected
