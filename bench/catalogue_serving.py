"""Large catalogues at serving time: one replica's scoring latency and memory at 100k and 1M items.

What a Serve replica runs for ``POST /v1/recommend``, without the HTTP around it: a
``Recommender`` (``recsys_dist/inference/predictor.py``) loaded from a checkpoint of the
default-width model (``ModelConfig``: hidden 64, 2 layers; ``data.max_len`` 50) whose
vocabulary holds ``--items`` items, then ``recommend`` on batches of random histories (lengths
uniform in 3..max_len, items uniform, seen items excluded, top ``--k``). Scoring encodes each
history's last position only and ranks a [requests x items] block: no [positions x items]
logits, which is what makes a 1M-item catalogue servable at all. The weights are untrained:
latency and memory depend on the shape and the catalogue, not on what was learned.

Each catalogue size runs in a fresh process, so peaks never mix. Memory is the peak resident
set (``ru_maxrss``), which includes the ~0.4 GiB of torch and transformers; ``loaded_mib`` is
the peak once the model is loaded, before any request. Latency is per batch over
``--batches`` timed batches after one warm-up. Prints one JSON line per (catalogue, batch
size), then Markdown rows for ``docs/benchmarks.md`` (only the JSON lines with ``--json``)::

    python bench/catalogue_serving.py --items 100000 1000000 --batch-sizes 1 64

Run it on an otherwise idle machine: it measures time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # its sibling, by file name (tests/ has a `bench` too)

from large_catalogue import peak_mib, run_child  # noqa: E402

from recsys_dist.config import DataConfig, ModelConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--batches", type=int, default=20, help="timed batches, after a warm-up")
    parser.add_argument("--max-len", type=int, default=DataConfig().max_len)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="only the JSON lines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        for result in _child(json.loads(args.child)):
            print(json.dumps(result), flush=True)
        return 0
    if min(args.items) < args.k or min(args.batch_sizes) < 1 or args.batches < 1:
        parser.error("--items must be at least --k; --batch-sizes and --batches positive")
    results = []
    for items in args.items:
        spec = {**_spec(args), "items": items}
        for result in _run_child(spec):
            results.append(result)
            print(json.dumps(result, sort_keys=True), flush=True)
    if not args.json:
        print(MARKDOWN_HEADER)
        print("\n".join(markdown_row(r) for r in results))
    return 1 if any("failed" in r for r in results) else 0


def _spec(args: argparse.Namespace) -> dict:
    names = ("batch_sizes", "batches", "max_len", "k", "threads", "seed")
    return {name: getattr(args, name) for name in names}


def _describe(spec: dict) -> dict:
    return {
        "benchmark": "catalogue_serving",
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        **{key: spec[key] for key in ("items", "max_len", "k", "batches")},
    }


def _run_child(spec: dict) -> list[dict]:
    """Measure one catalogue in a fresh interpreter: one result per batch size."""
    lines, failed = run_child(__file__, spec)
    if failed:
        return [{**_describe(spec), "failed": failed}]
    return [{**_describe(spec), **line} for line in lines]


def _child(spec: dict) -> list[dict]:
    """Load a ``Recommender`` over ``spec["items"]`` items and time its batches."""
    import torch

    from recsys_dist.inference.predictor import Recommender

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cpu = torch.device("cpu")
    baseline = peak_mib(cpu)
    with tempfile.TemporaryDirectory() as directory:
        _write_checkpoint(directory, spec)
        recommender = Recommender(directory, k=spec["k"])
    loaded = peak_mib(cpu)
    rng = np.random.default_rng(spec["seed"])
    results = []
    for size in spec["batch_sizes"]:
        batches = [_histories(rng, spec, size) for _ in range(1 + spec["batches"])]
        seconds = []
        for item_ids, timestamps in batches:
            start = time.perf_counter()
            found = recommender.recommend(item_ids, timestamps)
            seconds.append(time.perf_counter() - start)
            _check(found, item_ids, spec["k"])
        timed = np.asarray(seconds[1:]) * 1000
        results.append(
            {
                "batch_size": size,
                "threads": torch.get_num_threads(),
                "p50_ms": round(float(np.percentile(timed, 50)), 2),
                "p99_ms": round(float(np.percentile(timed, 99)), 2),
                "requests_per_s": round(size * len(timed) / (timed.sum() / 1000), 1),
                "peak_memory_mib": round(peak_mib(cpu), 1),
                "loaded_mib": round(loaded, 1),
                "baseline_memory_mib": round(baseline, 1),
            }
        )
    return results


def _write_checkpoint(directory: str, spec: dict) -> None:
    """An untrained default-width model and a vocabulary of ``items`` ids, saved as training
    saves a checkpoint (``Recommender`` loads either a checkpoint or an export)."""
    import pyarrow as pa
    import torch

    from recsys_dist import checkpoint
    from recsys_dist.data.vocab import Vocabulary
    from recsys_dist.model import Bert4Rec, Bert4RecConfig

    vocab = Vocabulary.from_counts(
        pa.array([f"i{n}" for n in range(spec["items"])]), np.ones(spec["items"], np.int64)
    )
    vocab_path = str(Path(directory) / "vocab-source.parquet")
    vocab.save(vocab_path)
    torch.manual_seed(spec["seed"])
    config = Bert4RecConfig.from_model_config(ModelConfig(), vocab.size, spec["max_len"])
    state = {"model_version": f"untrained-{spec['items']}-items"}
    checkpoint.save_checkpoint(directory, Bert4Rec(config).eval(), vocab_path, state)


def _histories(rng, spec: dict, size: int) -> tuple[list[list[str]], list[np.ndarray]]:
    """``size`` histories of raw ids, oldest first, a minute apart."""
    lengths = rng.integers(min(3, spec["max_len"]), spec["max_len"] + 1, size)
    item_ids = [[f"i{n}" for n in rng.integers(0, spec["items"], length)] for length in lengths]
    timestamps = [10**9 + 60 * np.arange(length, dtype=np.int64) for length in lengths]
    return item_ids, timestamps


def _check(found, item_ids: list[list[str]], k: int) -> None:
    """The timed work is the real answer: k items a row, none already seen."""
    for recommended, seen in zip(found.item_ids, item_ids, strict=True):
        if len(recommended) != k or set(recommended) & set(seen):
            raise AssertionError(f"bad recommendations: {recommended} for history {seen}")


MARKDOWN_HEADER = (
    "| date | machine | items | batch | p50 ms | p99 ms | requests/s | peak MiB | loaded MiB |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(r: dict) -> str:
    """One row of the table under :data:`MARKDOWN_HEADER`."""
    if "failed" in r:
        return f"| {r['date']} | {r['machine']} | {r['items']:,} | | | | | | {r['failed']} |"
    cells = [
        r["date"],
        r["machine"],
        f"{r['items']:,}",
        r["batch_size"],
        f"{r['p50_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        f"{r['requests_per_s']:,.1f}",
        f"{r['peak_memory_mib']:,.0f}",
        f"{r['loaded_mib']:,.0f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
