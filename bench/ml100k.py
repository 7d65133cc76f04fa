"""Quality benchmark: MovieLens-100K, leave-one-out, max length 50, the default config.

Imports ``../shared/datasets/ml-100k`` (RecBole atomic files), prepares it, trains with the
default config on Ray Train + DeepSpeed, evaluates on test with full-catalogue ranking (seen
items excluded) and prints one JSON object plus a Markdown row for ``docs/benchmarks.md``::

    ./dev bench                       # or: python bench/ml100k.py --workers 2 [key=value ...]

Target (issue 2): test NDCG@10 >= 0.070 in under 600 s of training on 2 CPU cores.
RecBole 1.2.1 on the same protocol and machine: SASRec 0.0549 (1,710 s), BERT4Rec 0.0561 (2,992 s).
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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli  # noqa: E402
from recsys_dist.config import EvalConfig, load_config  # noqa: E402
from recsys_dist.data.importers import import_dataset  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "ml-100k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DATASET))
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    if not Path(args.dataset, "ml-100k.inter").exists():
        print(f"MovieLens-100K not found at {args.dataset}", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ml100k-"))
    overrides = [*args.overrides, f"train.workers={args.workers}"]
    if args.gpu:
        overrides.append("train.use_gpu=true")
    config = load_config(None, overrides)
    cli.init_ray(None, min_cpus=args.workers + 2)
    result = run(Path(args.dataset), work, config)
    print(json.dumps(result, sort_keys=True))
    print(markdown_row(result))
    return 0


def run(dataset: Path, work: Path, config) -> dict:
    raw, prepared, run_dir = work / "raw", work / "prepared", work / "run"
    import_dataset("recbole", str(dataset), str(raw), overwrite=True)
    started = time.perf_counter()
    manifest = prepare_dataset(str(raw), str(prepared), config.data)
    prepare_s = time.perf_counter() - started
    summary = train(str(prepared), str(run_dir), config)
    test = evaluate_run(str(run_dir), "test", EvalConfig())
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"),
        "workers": config.train.workers,
        "train_rows": manifest["counts"]["train_rows"],
        "prepare_s": round(prepare_s, 1),
        "train_s": summary.train_seconds,
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "train_seq_per_s": summary.best_metrics["train_seq_per_s"],
        "valid_ndcg@10": round(summary.best_metrics["valid_ndcg@10"], 4),
        **{f"test_{k}": round(test[k], 4) for k in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20")},
        "test_popularity_ndcg@10": round(test["baseline_popularity"]["ndcg@10"], 4),
        "protocol": test["protocol"],
    }


def markdown_row(r: dict) -> str:
    return (
        f"| {r['date']} | {r['machine']} | {r['workers']} | {r['epochs']} ({r['best_epoch']}) "
        f"| {r['train_s']} | {r['train_seq_per_s']} | {r['test_ndcg@10']} | {r['test_hr@10']} "
        f"| {r['test_mrr@10']} | {r['test_popularity_ndcg@10']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
