"""Config loading: YAML, key=value overrides, strict keys, types and ranges."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest

from recsys_dist import cli
from recsys_dist.config import (
    Config,
    ConfigError,
    DataConfig,
    check_prepared_with,
    config_from_dict,
    load_config,
    preset_for,
    presets,
    ranges,
)


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


def test_a_base_layer_lies_under_the_file_and_the_overrides(tmp_path):
    """``base`` (a dataset's data settings) comes first; a file's section is laid over it
    key by key, and overrides over both."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  window_stride: 5\nmodel:\ntrain:\n  lr: 0.01\n")
    base = {"data": {"max_len": 30, "window_stride": 3}, "train": {"epochs": 4}}
    config = load_config(path, ["data.dedup=false", "model.hidden_size=32"], base=base)
    assert (config.data.max_len, config.data.window_stride, config.data.dedup) == (30, 5, False)
    assert (config.train.epochs, config.train.lr, config.model.hidden_size) == (4, 0.01, 32)
    assert base == {"data": {"max_len": 30, "window_stride": 3}, "train": {"epochs": 4}}
    assert load_config(None, base=base).data.max_len == 30
    assert load_config("long-histories", base=base).data.max_len == 200  # a preset is a file


def test_data_settings_that_disagree_with_the_datasets_are_named_in_one_line():
    prepared = {"max_len": 30, "window_stride": 10, "split": "loo"}
    check_prepared_with(DataConfig(max_len=30), prepared, "DIR")  # the rest: the defaults
    check_prepared_with(DataConfig(max_len=30, dedup=False), prepared, "DIR")  # not recorded
    with pytest.raises(ConfigError) as refused:
        check_prepared_with(DataConfig(max_len=200, window_stride=100), prepared, "DIR")
    message = str(refused.value)
    assert message.startswith(
        "data.max_len=200 disagrees with the dataset's 30, data.window_stride=100 with its 10 "
        "(prepared into DIR): a data setting is fixed when the data is prepared"
    ), message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="^data.split=time disagrees with the dataset's loo "):
        check_prepared_with(DataConfig(max_len=30, split="time"), prepared, "DIR")


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


def _numeric_fields() -> list[tuple[str, type, str, type]]:
    """(section, section class, field, number type) of every int, float or tuple-of-int
    field of every section, found by walking the dataclasses: a new one is tested too."""
    found = []
    for section, cls in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(cls).items():
            number = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            if number in (int, float):
                found.append((section, cls, name, number))
    return found


NUMERIC = _numeric_fields()


def _just_outside(allowed, number: type) -> list:
    """The nearest values below and above ``allowed`` (the next int, or the next double)."""
    below = allowed.low - 1 if number is int else math.nextafter(allowed.low, -math.inf)
    above = allowed.high + 1 if number is int else math.nextafter(allowed.high, math.inf)
    return [
        number(allowed.low) if allowed.low_open else below,
        number(allowed.high) if allowed.high_open else above,
    ]


@pytest.mark.parametrize(
    ("section", "cls", "name", "number"), NUMERIC, ids=[f"{s}.{n}" for s, _, n, _ in NUMERIC]
)
def test_every_numeric_setting_has_a_range_checked_at_load(section, cls, name, number):
    assert name in ranges(cls), f"{section}.{name} has no range: declare it with bounded()"
    allowed = ranges(cls)[name]
    default = getattr(getattr(Config(), section), name)
    assert all(item in allowed for item in (default if isinstance(default, tuple) else [default]))
    for value in _just_outside(allowed, number):
        given = [value] if isinstance(default, tuple) else value
        message = re.escape(f"{section}.{name} must be in {allowed}, got {value!r}")
        with pytest.raises(ConfigError, match=f"^{message}$"):
            config_from_dict({section: {name: given}})


def test_a_range_refuses_nan_and_keeps_the_values_with_a_meaning_of_their_own():
    with pytest.raises(ConfigError, match="serve.batch_wait_s"):
        load_config(None, ["serve.batch_wait_s=.nan"])
    kept = load_config(
        None, ["interests.blend=-1", "serve.rate_limit_per_s=0", "train.time_budget_s=0"]
    )
    assert (kept.interests.blend, kept.serve.rate_limit_per_s, kept.train.time_budget_s) == (
        -1.0,
        0.0,
        0.0,
    )


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("serve.max_body_bytes=0", "[1024, 1073741824]"),  # 0 would switch the limit off
        ("serve.api_keys_reload_s=0", "[0.1, 3600]"),  # 0 would spin the reload thread
        ("serve.rate_limit_per_s=-1", "[0, 1000000]"),  # negative would switch limiting off
    ],
)
def test_config_show_refuses_an_out_of_range_setting_in_one_line(override, allowed, capsys):
    assert cli.main(["config", "show", override]) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    key = override.partition("=")[0]
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert key in captured.err and allowed in captured.err, captured.err


def test_the_operations_guide_lists_every_range_as_the_code_has_it():
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    listed = dict(re.findall(r"^\| `(\w+\.\w+)` \| `([^`]+)` \|", text, re.M))
    expected = {f"{s}.{n}": str(ranges(cls)[n]) for s, cls, n, _ in NUMERIC}
    assert listed == expected
