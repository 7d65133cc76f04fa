"""bench/quantize.py at a tiny size, without the quality part (which trains): every variant
is measured and the tables are printed."""

from __future__ import annotations

import json

from tests.bench.scripts import load_bench


def test_latency_size_and_matmul_at_a_tiny_size(tmp_path, capsys):
    bench = load_bench("quantize")
    bench.WARMUP_S = 0.1
    argv = ["--skip-quality", "--items", "1000", "--seconds", "0.3", "--rounds", "2"]
    assert bench.main([*argv, "--qps", "50", "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    (size,) = (r for r in results if r["part"] == "size")
    assert size["int8"]["weights_bytes"] < 0.5 * size["fp32"]["weights_bytes"]
    latency = [(r["variant"], r["round"]) for r in results if r["part"] == "latency"]
    assert latency == [(v, 1) for v in bench.VARIANTS] + [(v, 2) for v in bench.VARIANTS[::-1]]
    for result in results:
        assert result["commit"] and result["date"]
        if result["part"] == "latency":
            assert result["requests"] == 15 and result["p99_ms"] >= result["p50_ms"] > 0
    assert [r["rows"] for r in results if r["part"] == "matmul"] == [1, 32]
    assert any(line.startswith("| int8 | 1 | 15 |") for line in lines)
