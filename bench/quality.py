"""Quality benchmark: the field's datasets, leave-one-out, full-catalogue ranking.

Imports one of ``../shared/datasets`` (``--dataset ml-100k | ml-1m | beauty``, or a path with
``--format``), prepares it, trains on Ray Train + DeepSpeed with the default config plus any
``section.key=value`` overrides, evaluates on test with seen items excluded AND kept, and
prints one JSON object plus a Markdown row for ``docs/benchmarks.md``::

    ./dev bench                       # ml-100k; or: python bench/quality.py --dataset ml-1m \
                                      #     --workdir /tmp/ml1m train.time_budget_s=3600

``--prepared DIR`` reuses a prepared dataset (ablations on one preparation). Targets: ml-100k
test NDCG@10 >= 0.070 (issue 2; RecBole 1.2.1 SASRec 0.0549, BERT4Rec 0.0561); ml-1m >= 0.19
and Beauty >= 0.055 (issue 13; published figures in ``../shared/README.md``).
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
from recsys_dist.data.prepared import load_manifest  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.train.trainer import dataset_config, train  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {  # name: (path, import format)
    "ml-100k": (SHARED / "ml-100k", "recbole"),
    "ml-1m": (SHARED / "ml-1m" / "ml-1m.txt", "sasrec"),
    "beauty": (SHARED / "amazon-beauty" / "beauty.txt", "sasrec"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help=f"{sorted(DATASETS)} or a path")
    parser.add_argument("--format", default=None, help="import format of a --dataset path")
    parser.add_argument("--prepared", default=None, help="reuse this prepared dataset")
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    dataset, data_format = DATASETS.get(args.dataset, (Path(args.dataset), args.format))
    if args.prepared is None and not dataset.exists():
        print(f"dataset not found at {dataset}", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-quality-"))
    overrides = [*args.overrides, f"train.workers={args.workers}"]
    if args.gpu:
        overrides.append("train.use_gpu=true")
    # A reused preparation's data settings are its own (its manifest's): data.* overrides
    # must agree with them. A fresh one is prepared with the overrides' data settings.
    if args.prepared is None:
        config = load_config(None, overrides)
    else:
        config = dataset_config(args.prepared, None, overrides)
    cli.init_ray(None, min_cpus=args.workers + 2)
    prepared, prepare_s = args.prepared, 0.0
    if prepared is None:
        prepared, prepare_s = prepare(dataset, data_format or "recbole", work, config)
    result = {"dataset": args.dataset, "overrides": args.overrides, "prepare_s": prepare_s}
    result.update(run(Path(prepared), work / "run", config))
    print(json.dumps(result, sort_keys=True))
    print(markdown_row(result))
    return 0


def prepare(dataset: Path, data_format: str, work: Path, config) -> tuple[str, float]:
    """Import and prepare ``dataset`` under ``work``; the prepared path and its seconds."""
    import_dataset(data_format, str(dataset), str(work / "raw"), overwrite=True)
    started = time.perf_counter()
    prepare_dataset(str(work / "raw"), str(work / "prepared"), config.data)
    return str(work / "prepared"), round(time.perf_counter() - started, 1)


def run(prepared: Path, run_dir: Path, config) -> dict:
    """Train on ``prepared`` and evaluate on test, seen items excluded and kept."""
    summary = train(str(prepared), str(run_dir), config)
    test = evaluate_run(str(run_dir), "test", EvalConfig())
    kept = evaluate_run(str(run_dir), "test", EvalConfig(exclude_seen=False))
    manifest = load_manifest(str(prepared))
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"),
        "workers": config.train.workers,
        "train_rows": manifest["counts"]["train_rows"],
        "train_s": summary.train_seconds,
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "train_seq_per_s": summary.best_metrics["train_seq_per_s"],
        "valid_ndcg@10": round(summary.best_metrics["valid_ndcg@10"], 4),
        **{f"test_{k}": round(test[k], 4) for k in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20")},
        **{f"test_kept_{k}": round(kept[k], 4) for k in ("ndcg@10", "hr@10")},
        "test_popularity_ndcg@10": round(test["baseline_popularity"]["ndcg@10"], 4),
        "protocol": test["protocol"],
        "ratings": test.get("ratings"),  # RMSE/MAE of the model and baselines, if rated
    }


def markdown_row(r: dict) -> str:
    return (
        f"| {r['date']} | {r['machine']} | {r['workers']} | {r['epochs']} ({r['best_epoch']}) "
        f"| {r['train_s']} | {r['train_seq_per_s']} | {r['test_ndcg@10']} | {r['test_hr@10']} "
        f"| {r['test_mrr@10']} | {r['test_popularity_ndcg@10']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
