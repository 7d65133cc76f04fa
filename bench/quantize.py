"""The quantized fast path (issue 16): quality, latency and size of int8 vs fp32, side by side.

Three measurements, each of the fp32 export and of its ``recsys-dist export --quantize int8``
artefact (``recsys_dist.inference.quantize.export_quantized``), in one run:

1. **Quality**: MovieLens-100K from ``../shared/datasets/ml-100k`` (skipped, with a message,
   where it is absent; or ``--skip-quality``), prepared and trained with bench/quality.py's
   helpers under a short budget (``train.time_budget_s=120`` unless overridden), then test
   NDCG@10 and HR@10 of both exports: full-catalogue ranking, seen items excluded, the run's
   own protocol (``evaluate_run`` on a copy of the run whose ``model/`` is the int8 export).
2. **Latency** at ``--qps`` (100) with a ``--items`` (100,000) catalogue: an untrained model of
   the default shape (hidden 64, 2 layers, ``max_len`` 50; latency depends on the shape and
   the catalogue, not on training, as in bench/serve_load.py), scored in this process through
   ``Recommender.recommend``. Requests of one random history (3..50 events) arrive on an
   open-loop schedule, request n due at ``start + n / qps``; each call scores every request
   due by then, at most ``serve.batch_size`` (32), as ``@serve.batch`` groups them (without
   its short wait), and a request's latency runs from when it was due to its answer, so time
   queued behind a slow call counts. No Ray Serve or HTTP (their share is in
   docs/benchmarks.md, "Online serving under load"): this isolates what the weights change,
   on one thread as a replica has. Three variants: fp32; int8 scored with the int8 kernel;
   int8 scored with the fp32 matmul over the dequantized table (``Int8Bert4Rec.int8_kernel =
   False``, what a GPU runs). ``--rounds`` (2) repeats them in alternating order.
   On a busy machine that load saturates; so also one ``recommend`` call of 1 and of 32
   requests per variant, the variants interleaved call by call (a busy spell slows them
   alike), and the item-scoring matmul alone (``[B, 64] x [items, 64]^T``), B = 1 and 32.
3. **Size** of each export in bytes (every file) and of its weights file.

    python bench/quantize.py --workdir /tmp/bench-quantize              # everything
    python bench/quantize.py --skip-quality --items 100000 --seconds 10  # latency and size

Prints one JSON line per measurement, then Markdown tables for docs/benchmarks.md. The
quality step trains on a local Ray (``--workers`` 2); a model already in ``--workdir`` is
reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import run_layout, schema  # noqa: E402
from recsys_dist.config import ServeConfig  # noqa: E402

ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"
QUICK_TRAIN = ["train.time_budget_s=120"]
VARIANTS = ("fp32", "int8", "int8-fp32-matmul")
WARMUP_S = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--qps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed load per variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a replica's 1)")
    parser.add_argument("--workers", type=int, default=2, help="training workers (quality)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("overrides", nargs="*", help="section.key=value for the quality run")
    args = parser.parse_args(argv)
    if args.items < 10 or args.qps <= 0 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--items >= 10; --qps, --seconds and --rounds positive")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-quantize-"))
    results = Results()
    latency_and_size(work / "latency", args, results)
    matmul(args.items, results)
    if args.skip_quality:
        print("quality: skipped (--skip-quality)", file=sys.stderr)
    elif not (ML100K / "ml-100k.inter").exists():
        print(f"quality: skipped, MovieLens-100K not found at {ML100K}", file=sys.stderr)
    else:
        results.append(quality(work / "ml-100k", args))
    print(markdown(results, args))
    return 0


class Results(list):
    """The measurements so far; each is printed as one JSON line as soon as it is made, so a
    later failure (the quality run trains) loses none."""

    def append(self, result: dict) -> None:
        print(json.dumps(result, sort_keys=True), flush=True)
        super().append(result)


def describe() -> dict:
    import torch

    return {
        "benchmark": "quantize",
        "date": date.today().isoformat(),
        "commit": _commit(),  # the working tree's base; uncommitted changes are not named
        "machine": f"{platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {torch.backends.cpu.get_cpu_capability()}",
    }


@functools.cache  # once a run: others may commit meanwhile
def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    return done.stdout.strip() or "unknown"


# --- latency and size ----------------------------------------------------------------------------


def latency_and_size(work: Path, args, results: Results) -> None:
    """Both exports of an untrained ``--items`` model, their sizes, and each variant's load."""
    from recsys_dist.inference.predictor import Recommender

    fp32_dir, int8_dir = build_exports(work, args.items)
    sizes = {"fp32": _size(fp32_dir), "int8": _size(int8_dir)}
    results.append({**describe(), "part": "size", "items": args.items, **sizes})
    recommenders = {"fp32": Recommender(str(fp32_dir)), "int8": Recommender(str(int8_dir))}
    histories = _histories(recommenders["fp32"].vocab, seed=0)
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            recommender = recommenders[variant.split("-")[0]]
            if variant.startswith("int8"):  # an Int8Bert4Rec: which matmul scores the table
                recommender.model.int8_kernel = variant == "int8"
            load = open_loop(recommender, histories, args.qps, args.seconds)
            part = {"part": "latency", "variant": variant, "round": round_ + 1}
            results.append({**describe(), **part, "items": args.items, **load})
    for rows in (1, ServeConfig().batch_size):
        medians = recommend_calls(recommenders, histories[:rows])
        results.append({**describe(), "part": "call", "items": args.items, "rows": rows, **medians})


def recommend_calls(recommenders: dict, histories: list, repeats: int = 20) -> dict[str, float]:
    """Median ms of one ``recommend`` call over ``histories`` per variant, the variants
    interleaved call by call so that a busy spell slows them alike."""
    seconds = {variant: [] for variant in VARIANTS}
    items, times = [h for h, _ in histories], [t for _, t in histories]
    for _ in range(repeats):
        for variant in VARIANTS:
            recommender = recommenders[variant.split("-")[0]]
            if variant.startswith("int8"):
                recommender.model.int8_kernel = variant == "int8"
            began = time.perf_counter()
            recommender.recommend(items, times)
            seconds[variant].append(time.perf_counter() - began)
    return {variant: round(float(np.median(s)) * 1000, 2) for variant, s in seconds.items()}


def build_exports(work: Path, items: int) -> tuple[Path, Path]:
    """``work/fp32``: an untrained default-shape model over ``items`` items, saved as training
    saves one; ``work/int8``: its quantized export. Reused when already there."""
    import torch

    from recsys_dist.checkpoint import save_checkpoint
    from recsys_dist.config import ModelConfig
    from recsys_dist.data.vocab import Vocabulary
    from recsys_dist.inference.quantize import export_quantized
    from recsys_dist.model import Bert4Rec, Bert4RecConfig

    fp32_dir, int8_dir = work / "fp32", work / "int8"
    if not (fp32_dir / "state.json").exists():
        import pyarrow as pa

        work.mkdir(parents=True, exist_ok=True)
        ids = pa.array([f"item{i}" for i in range(items)])
        vocab = Vocabulary.from_counts(ids, np.arange(items, 0, -1, dtype=np.int64))
        vocab.save(str(work / schema.VOCAB_FILE))
        torch.manual_seed(0)
        config = Bert4RecConfig.from_model_config(ModelConfig(), vocab.size, 50)
        state = {"epoch": 0, "metrics": {}, "data_hash": "untrained-bench"}
        save_checkpoint(fp32_dir, Bert4Rec(config).eval(), str(work / schema.VOCAB_FILE), state)
    if not (int8_dir / "state.json").exists():
        export_quantized(str(fp32_dir), str(int8_dir), "int8")
    return fp32_dir, int8_dir


def _histories(vocab, seed: int, count: int = 512) -> list[tuple[list[str], np.ndarray]]:
    """Random histories of 3..50 known items, one event a minute, oldest first."""
    rng = np.random.default_rng(seed)
    ids = vocab.item_ids.to_pylist()
    out = []
    for _ in range(count):
        length = int(rng.integers(3, 51))
        chosen = rng.integers(0, len(ids), length)
        times = 1_700_000_000 + 60 * np.arange(length, dtype=np.int64)
        out.append(([ids[i] for i in chosen], times))
    return out


def open_loop(recommender, histories, qps: float, seconds: float) -> dict:
    """Requests due every ``1 / qps`` s; each call scores every request due by then (at most
    ``serve.batch_size``, as ``@serve.batch`` would); latency from due to done."""
    _drive(recommender, histories, qps, WARMUP_S)
    latencies, service, sizes, elapsed = _drive(recommender, histories, qps, seconds)
    ms, busy = np.asarray(latencies) * 1000, np.asarray(service) * 1000
    return {
        "requests": len(ms),
        "qps_offered": qps,
        "qps_achieved": round(len(ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_batch": round(float(np.mean(sizes)), 2),
        "call_p50_ms": round(float(np.percentile(busy, 50)), 2),
        "call_p99_ms": round(float(np.percentile(busy, 99)), 2),
    }


def _drive(recommender, histories, qps: float, seconds: float):
    most, total = ServeConfig().batch_size, int(qps * seconds)
    latencies, service, sizes = [], [], []
    start, n = time.perf_counter(), 0
    while n < total:
        wait = start + n / qps - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # the arrival schedule
        due_now = int((time.perf_counter() - start) * qps) + 1  # requests due by now
        batch = range(n, min(total, n + most, max(due_now, n + 1)))
        rows = [histories[i % len(histories)] for i in batch]
        began = time.perf_counter()
        recommender.recommend([items for items, _ in rows], [times for _, times in rows])
        done = time.perf_counter()
        latencies += [done - (start + i / qps) for i in batch]
        service.append(done - began)
        sizes.append(len(batch))
        n = batch.stop
    return latencies, service, sizes, time.perf_counter() - start


def _size(directory: Path) -> dict:
    from recsys_dist.inference.quantize import export_bytes
    from recsys_dist.model import WEIGHTS_FILE

    return {"bytes": export_bytes(str(directory)), "weights_bytes": _bytes(directory, WEIGHTS_FILE)}


def _bytes(directory: Path, name: str) -> int:
    return (directory / name).stat().st_size


def matmul(items: int, results: Results, repeats: int = 30) -> None:
    """The item-scoring matmul alone: fp32, the int8 kernel, and torch's weight-only int8 op
    (``_weight_int8pack_mm``: torchao's CPU int8 weight-only path); median ms per call."""
    import torch
    import torch.nn.functional as F

    from recsys_dist.model.quantize import _int8_linear, _pack, quantize_rows

    torch.manual_seed(0)
    table, bias = torch.randn(items + 2, 64) * 0.02, torch.zeros(items + 2)
    ints, scale = quantize_rows(table)
    packed = _pack(ints, scale)
    for rows in (1, 32):
        h = torch.randn(rows, 64)
        calls = {"fp32": lambda h=h: F.linear(h, table, bias)}
        if packed is not None:
            calls["int8"] = lambda h=h: _int8_linear(h, packed, bias)
        if rows == 1 and hasattr(torch, "_weight_int8pack_mm"):  # slow beyond a row here
            calls["int8-weight-only"] = lambda h=h: torch._weight_int8pack_mm(h, ints, scale) + bias
        seconds = {name: [] for name in calls}
        for _ in range(repeats):  # interleaved, so contention hits every variant alike
            for name, call in calls.items():
                began = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - began)
        medians = {name: round(float(np.median(s)) * 1000, 3) for name, s in seconds.items()}
        results.append({**describe(), "part": "matmul", "items": items, "rows": rows, **medians})


# --- quality -------------------------------------------------------------------------------------


def quality(work: Path, args) -> dict:
    """Train on MovieLens-100K (or reuse ``work/run``), export int8, evaluate both on test."""
    from recsys_dist import cli
    from recsys_dist.config import EvalConfig, load_config
    from recsys_dist.evaluation.evaluate import evaluate_run
    from recsys_dist.inference.quantize import export_quantized
    from recsys_dist.train.trainer import train

    prepare = _script("quality").prepare  # bench/quality.py's import and preparation
    config = load_config(None, [*QUICK_TRAIN, *args.overrides, f"train.workers={args.workers}"])
    run, int8_run = work / "run", work / "run-int8"
    cli.init_ray(None, min_cpus=args.workers + 2)
    train_s = None
    if not (Path(run_layout.model_dir(run)) / "state.json").exists():
        prepared, _ = prepare(ML100K, "recbole", work, config)
        started = time.perf_counter()
        train(prepared, str(run), config, overwrite=True)
        train_s = round(time.perf_counter() - started, 1)
    if not int8_run.exists():  # the same run, its model/ the int8 export
        ignored = shutil.ignore_patterns(run_layout.RAY_RESULTS_DIR, run_layout.MODEL_DIR)
        shutil.copytree(run, int8_run, ignore=ignored)
        export_quantized(run_layout.model_dir(run), run_layout.model_dir(int8_run), "int8")
    metrics = {}
    for name, directory in (("fp32", run), ("int8", int8_run)):
        test = evaluate_run(str(directory), "test", EvalConfig())
        metrics[name] = {k: round(test[k], 4) for k in ("ndcg@10", "hr@10")}
        metrics[name].update(_size(Path(run_layout.model_dir(directory))))
        protocol = test["protocol"]
    drop = 1 - metrics["int8"]["ndcg@10"] / metrics["fp32"]["ndcg@10"]
    return {
        **describe(),
        "part": "quality",
        "dataset": "ml-100k",
        "overrides": [*QUICK_TRAIN, *args.overrides],
        "train_s": train_s,
        "protocol": protocol,
        **metrics,
        "ndcg@10_relative_drop": round(drop, 4),
    }


def _script(name: str):
    """Another bench script as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- tables --------------------------------------------------------------------------------------


def markdown(results: list[dict], args) -> str:
    lines = []
    latency = [r for r in results if r["part"] == "latency"]
    if latency:
        lines += [
            f"\nLatency, {args.items:,} items, {args.qps:g} QPS open loop, in-process "
            "`Recommender.recommend` over the requests due (at most `serve.batch_size`):\n",
            "| variant | round | requests | QPS achieved | p50 ms | p99 ms | mean batch "
            "| call p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in latency:
            cells = [r["variant"], r["round"], r["requests"], r["qps_achieved"], r["p50_ms"]]
            call = f"{r['call_p50_ms']} / {r['call_p99_ms']}"
            lines.append(_row([*cells, r["p99_ms"], r["mean_batch"], call]))
    calls = [r for r in results if r["part"] == "call"]
    if calls:
        lines += ["\nOne `recommend` call, median ms of 20, the variants interleaved:\n"]
        lines += ["| requests | " + " | ".join(VARIANTS) + " |", "|---|---|---|---|"]
        lines += [_row([r["rows"], *(r[v] for v in VARIANTS)]) for r in calls]
    matmuls = [r for r in results if r["part"] == "matmul"]
    if matmuls:
        lines += ["\nThe item-scoring matmul alone, median ms per call:\n"]
        lines += ["| rows | fp32 | int8 | int8 weight-only |", "|---|---|---|---|"]
        for r in matmuls:
            cells = [r["rows"], r["fp32"], r.get("int8", "-"), r.get("int8-weight-only", "-")]
            lines.append(_row(cells))
    lines += ["\nSize in bytes (every file of the export; its model.safetensors):\n"]
    lines += ["| model | fp32 | int8 | int8 / fp32 |", "|---|---|---|---|"]
    for r in results:
        if r["part"] in ("size", "quality"):
            name = f"{r['items']:,} items, untrained" if r["part"] == "size" else "ml-100k"
            for key in ("bytes", "weights_bytes"):
                fp32, int8 = r["fp32"][key], r["int8"][key]
                label = name if key == "bytes" else f"{name}: weights"
                lines.append(_row([label, f"{fp32:,}", f"{int8:,}", f"{int8 / fp32:.3f}"]))
    for r in results:
        if r["part"] == "quality":
            lines += [
                f"\nQuality, ml-100k test ({r['protocol']}):\n",
                "| export | NDCG@10 | HR@10 |",
                "|---|---|---|",
                _row(["fp32", r["fp32"]["ndcg@10"], r["fp32"]["hr@10"]]),
                _row(["int8", r["int8"]["ndcg@10"], r["int8"]["hr@10"]]),
                f"\nNDCG@10 relative drop: {r['ndcg@10_relative_drop']:.2%}",
            ]
    return "\n".join(lines)


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
