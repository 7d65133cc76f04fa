"""``export --quantize int8`` (inference/quantize.py) on the session's tiny untrained export:
the artefact loads through the one loader, checksummed, and serves through the one predictor.

Tolerance, as in tests/model/test_quantize.py: every recommended item's score within 2 % of
the fp32 scores' range, and the top-10 lists agree on at least 90 % of their items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.checkpoint import HASHES_FILE, TamperedModelError, load_checkpoint
from recsys_dist.errors import OutputExistsError, UserInputError
from recsys_dist.inference.predictor import Recommender
from recsys_dist.inference.quantize import export_quantized
from recsys_dist.model import WEIGHTS_FILE
from recsys_dist.model.quantize import Int8Bert4Rec

SCORE_TOLERANCE = 0.02
TOP10_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[str, dict]:
    """The tiny run's export quantized once for this module: (directory, what it returned)."""
    output = str(tmp_path_factory.mktemp("int8") / "model-int8")
    return output, export_quantized(run_layout.model_dir(tiny_run.run), output, "int8")


def test_the_int8_export_loads_through_load_checkpoint_and_is_smaller(tiny_run, exported):
    output, result = exported
    source = run_layout.model_dir(tiny_run.run)
    assert result["quantization"] == "int8" and result["bytes"] < result["source_bytes"]
    int8_weights = (Path(output) / WEIGHTS_FILE).stat().st_size
    # 62 % here: this model's position and time-gap tables (fp32) are as large as its item
    # table; at 100,000 items the weights are 28 % of fp32's (docs/benchmarks.md).
    assert int8_weights < 0.7 * (Path(source) / WEIGHTS_FILE).stat().st_size
    loaded, original = load_checkpoint(output), load_checkpoint(source)
    assert isinstance(loaded.model, Int8Bert4Rec)
    assert loaded.vocab.item_ids.equals(original.vocab.item_ids)
    assert loaded.state["quantization"] == "int8"
    assert loaded.state["data_hash"] == original.state["data_hash"]
    listed = json.loads((Path(output) / HASHES_FILE).read_text())["sha256"]
    assert sorted(listed) == sorted(p.name for p in Path(output).iterdir() if p.name != HASHES_FILE)


def test_the_recommender_serves_it_unchanged_and_close_to_fp32(tiny_run, exported):
    output, result = exported
    fp32 = Recommender(run_layout.model_dir(tiny_run.run), k=10)
    int8 = Recommender(output, k=10)
    assert int8.model_version == result["model_version"] == f"{fp32.model_version}-int8"
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).slice(0, 32)
    items = [fp32.vocab.to_item_ids(np.asarray(i)).to_pylist() for i in users["items"]]
    times = [np.asarray(t, np.int64) for t in users[schema.TIMESTAMPS].to_pylist()]
    expected, got = fp32.recommend(items, times), int8.recommend(items, times)
    agreement = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(expected.item_ids, got.item_ids)]
    )
    assert agreement >= TOP10_AGREEMENT
    indices = [fp32.vocab.lookup(row) for row in items]
    scores = fp32.next_item_scores(indices, times, np.asarray([t[-1] for t in times]))
    finite = scores[np.isfinite(scores.numpy())]
    spread = float(finite.max() - finite.min())
    for row, (names, values) in enumerate(zip(got.item_ids, got.scores)):
        truth = scores[row, fp32.vocab.lookup(names)].numpy()
        assert np.abs(values - truth).max() <= SCORE_TOLERANCE * spread


def test_a_tampered_int8_export_is_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    weights = bytearray((copy / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 1  # one flipped bit in the last int8 weight
    (copy / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(TamperedModelError, match=WEIGHTS_FILE):
        load_checkpoint(copy)


def test_outputs_that_would_lose_something_are_refused(tiny_run, exported, tmp_path):
    source = run_layout.model_dir(tiny_run.run)
    with pytest.raises(UserInputError, match="int4"):
        export_quantized(source, str(tmp_path / "out"), "int4")
    for covering in (source, str(tiny_run.run)):  # the export itself, or the run holding it
        with pytest.raises(UserInputError, match="export being quantized"):
            export_quantized(source, covering, "int8", overwrite=True)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_quantized(source, exported[0], "int8")
    with pytest.raises(UserInputError, match="already quantized"):
        export_quantized(exported[0], str(tmp_path / "twice"), "int8")
