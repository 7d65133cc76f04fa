"""bench/large_catalogue.py at a tiny size: every loss, each in its own process."""

from __future__ import annotations

import json

from tests.bench.scripts import load_bench


def _results(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_smallest_path_measures_every_loss(capsys):
    """Every loss at a tiny size, measured in this process (fresh processes cost seconds of
    imports each; the next test runs that path once)."""
    argv = ["--items", "1000", "--steps", "1", "--batch-size", "4", "--threads", "1"]
    argv += ["--device", "cpu", "--max-logits", "4000", "--in-process"]
    assert load_bench("large_catalogue").main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = _results(lines)
    assert [r["mode"] for r in results] == ["full", "full-chunked", "sampled"]
    for result in results:
        assert result["items"] == 1000 and result["vocab_size"] == 1002
        assert result["seq_per_s"] > 0 and result["device"] == "cpu"
        assert result["peak_memory_mib"] >= result["baseline_memory_mib"] > 0
    assert [r["max_logits"] for r in results] == [0, 4000, 4000]
    assert results[2]["negatives"] == 1024 and results[0]["negatives"] is None
    # The same batches and initial weights for every loss: the exact two agree at step one.
    assert results[0]["first_loss"] == results[1]["first_loss"]
    rows = [line for line in lines if line.startswith("| 20")]
    assert len(rows) == 3 and "sampled, 1024 negatives" in rows[2]


def test_each_configuration_runs_in_a_fresh_process(capsys):
    argv = ["--items", "1000", "--steps", "1", "--batch-size", "4", "--threads", "1"]
    argv += ["--device", "cpu", "--modes", "sampled", "--json"]
    assert load_bench("large_catalogue").main(argv) == 0
    (result,) = _results(capsys.readouterr().out.strip().splitlines())
    assert "in_process" not in result and result["mode"] == "sampled"
    assert result["seq_per_s"] > 0 and result["peak_memory_mib"] > 0


def test_the_unchunked_loss_is_skipped_above_the_memory_cap(capsys):
    bench = load_bench("large_catalogue")
    argv = ["--items", "1000", "--steps", "1", "--batch-size", "4", "--modes", "full"]
    assert bench.main([*argv, "--memory-cap-gib", "1e-6", "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["skipped"].startswith("skipped: the loss would hold")
    assert "seq_per_s" not in result
