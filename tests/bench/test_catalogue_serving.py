"""bench/catalogue_serving.py, tiny: a fresh process scores batches through ``Recommender``."""

from __future__ import annotations

import json

import pytest

from tests.bench.scripts import load_bench


def test_each_batch_size_is_timed_on_the_real_scoring_path(capsys):
    argv = ["--items", "500", "--batch-sizes", "1", "3", "--batches", "2", "--threads", "1"]
    assert load_bench("catalogue_serving").main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["items"], r["batch_size"]) for r in results] == [(500, 1), (500, 3)]
    for result in results:
        assert 0 < result["p50_ms"] <= result["p99_ms"] and result["requests_per_s"] > 0
        assert result["peak_memory_mib"] >= result["loaded_mib"] >= result["baseline_memory_mib"]
    rows = [line for line in lines if line.startswith("| 20")]
    assert len(rows) == 2 and "| 500 | 3 |" in rows[1]


def test_a_catalogue_smaller_than_k_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_bench("catalogue_serving").main(["--items", "5", "--k", "10"])
    assert exit_info.value.code == 2
    assert "--items must be at least --k" in capsys.readouterr().err
