"""``model.item_text`` in the trainer: the driver computes the text matrix and the trained items
once, or refuses a dataset without a catalogue in one line (exit 2) before training."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import ray

from recsys_dist import cli, schema
from recsys_dist.config import Config, ConfigError, ModelConfig, load_config
from recsys_dist.data.item_text import trained_items
from recsys_dist.train.trainer import _item_text


def test_the_switch_is_a_strict_bool_and_off_by_default():
    assert Config().model.item_text is False
    assert load_config(None, ["model.item_text=true"]).model.item_text is True
    with pytest.raises(ConfigError, match="model.item_text must be bool"):
        load_config(None, ["model.item_text=1"])


def test_the_driver_hands_the_workers_the_text_matrix(tiny_run):
    prepared = str(tiny_run.prepared)
    assert _item_text(prepared, tiny_run.config) is None  # off by default
    config = dataclasses.replace(tiny_run.config, model=ModelConfig(item_text=True))
    shared = ray.get(_item_text(prepared, config))
    manifest = json.loads((tiny_run.prepared / schema.MANIFEST_FILE).read_text())
    matrix = shared["matrix"]
    assert matrix.shape == (manifest["vocab_size"], 384) and matrix.dtype == np.float32
    assert not matrix[: schema.NUM_SPECIAL_TOKENS].any()
    norms = np.linalg.norm(matrix[schema.NUM_SPECIAL_TOKENS :], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)  # every generated item has a title
    np.testing.assert_array_equal(shared["trained"], trained_items(prepared, len(matrix)))


def test_a_dataset_without_catalogue_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_run.prepared, prepared)
    manifest = json.loads((prepared / schema.MANIFEST_FILE).read_text())
    manifest["sources"][0]["path"] = str(tmp_path / "events-only")  # no items/ beside them
    (prepared / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    argv = ["train", "--data", str(prepared), "--output", str(tmp_path / "run")]
    assert cli.main([*argv, "model.item_text=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.item_text needs the item catalogue" in err[0], err
