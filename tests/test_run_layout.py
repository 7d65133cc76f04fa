"""The run directory's one layout module: names, the run record, and the saved settings that
commands using a trained run start from."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from recsys_dist import run_layout
from recsys_dist.config import Config, DataConfig, EvalConfig, load_config
from recsys_dist.errors import UserInputError


def make_run(tmp_path, config: Config, data: DataConfig | None = None):
    run = tmp_path / "run"
    config.save(run_layout.config_file(run))
    identity = {run_layout.DATA_SETTINGS: dataclasses.asdict(data)} if data else {}
    run_layout.write_run_record(run, str(tmp_path / "prepared"), identity)
    return run


def test_a_directory_without_run_json_is_a_user_error(tmp_path):
    for call in (run_layout.prepared_dir_of, run_layout.run_record):
        with pytest.raises(UserInputError, match="not a run directory \\(no run.json\\)"):
            call(tmp_path)
    with pytest.raises(UserInputError, match="train one with recsys-dist train"):
        run_layout.saved_settings(tmp_path, ["eval"])
    assert not run_layout.is_run(tmp_path)


def test_the_run_record_names_the_prepared_data_absolutely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_layout.write_run_record("run", "prepared", {"data_hash": "abc"})
    assert run_layout.is_run("run")
    assert run_layout.prepared_dir_of("run") == str(tmp_path / "prepared")
    assert run_layout.run_record("run")["data_hash"] == "abc"


def test_every_name_sits_directly_in_the_run(tmp_path):
    helpers = {
        run_layout.config_file: run_layout.CONFIG_FILE,
        run_layout.metrics_file: run_layout.METRICS_FILE,
        run_layout.ray_results_dir: run_layout.RAY_RESULTS_DIR,
        run_layout.model_dir: run_layout.MODEL_DIR,
        run_layout.interests_file: run_layout.INTERESTS_FILE,
        run_layout.tracking_file: run_layout.TRACKING_FILE,
    }
    for helper, name in helpers.items():
        assert helper(tmp_path) == str(tmp_path / name)
    assert len(set(helpers.values()) | {run_layout.RUN_RECORD}) == len(helpers) + 1
    for name in (*helpers.values(), run_layout.RUN_RECORD):  # drawn in the module's tree
        assert f"RUN/{name}" in run_layout.__doc__, name


def test_the_event_log_sits_beside_the_run_so_overwriting_the_run_keeps_it(tmp_path):
    assert run_layout.event_log_dir(tmp_path / "run") == str(tmp_path / run_layout.EVENT_LOG_DIR)
    assert f"RUN/../{run_layout.EVENT_LOG_DIR}" in run_layout.__doc__


def test_saved_settings_then_a_config_file_then_overrides(tmp_path):
    """The run's eval section is the base; an explicit --config file and overrides win."""
    saved_eval = EvalConfig(ks=(1, 3), exclude_seen=False, sampled_negatives=9, batch_size=7)
    run = make_run(tmp_path, Config(eval=saved_eval))
    assert load_config(None, run_layout.saved_settings(run, ["eval"])).eval == saved_eval
    given = tmp_path / "given.yaml"
    given.write_text(yaml.safe_dump({"eval": {"batch_size": 64}}))
    base = run_layout.saved_settings(run, ["eval"], given)
    config = load_config(given, [*base, "eval.sampling=popularity"])
    assert config.eval == dataclasses.replace(saved_eval, batch_size=64, sampling="popularity")


def test_data_settings_are_those_the_run_was_prepared_with(tmp_path):
    """run.json records how the training data was prepared; config.yaml's data section only
    gave the model its max_len, so recommend groups histories as prepare did."""
    prepared_with = DataConfig(max_len=3, max_history=3, dedup=False, bucket_rows=11)
    run = make_run(tmp_path, Config(), prepared_with)
    assert load_config(None, run_layout.saved_settings(run, ["data"])).data == prepared_with
    older = make_run(tmp_path / "older", Config(data=DataConfig(max_history=77)))
    assert load_config(None, run_layout.saved_settings(older, ["data"])).data.max_history == 77
