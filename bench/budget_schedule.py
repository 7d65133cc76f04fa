"""A time budget as a schedule vs a cut: the same budget, the same data, test NDCG@10.

Trains twice on one prepared dataset with ``train.time_budget_s``: once with the learning-rate
decay fitted to the budget (``train.budget_schedule=true``, the default: the run ends
annealed) and once cut where the time runs out (``false``: the epochs-long schedule stops
part-way, at a high rate). Prints one JSON object per run and Markdown rows for
``docs/benchmarks.md``::

    python bench/budget_schedule.py --format sasrec \\
        --dataset ../shared/datasets/amazon-beauty/beauty.txt --budget 600
    python bench/budget_schedule.py --dataset ../shared/datasets/ml-100k --budget 150

Run the two one after the other on an otherwise idle machine: a budget measures time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli  # noqa: E402
from recsys_dist.config import load_config  # noqa: E402
from recsys_dist.data.importers import import_dataset  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO.parent / "shared/datasets/ml-100k"))
    parser.add_argument("--format", default="recbole", help="import format of --dataset")
    parser.add_argument("--budget", type=float, default=150.0, help="train.time_budget_s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument(
        "--schedules", nargs="+", default=["fitted", "cut"], choices=["fitted", "cut"]
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    if not Path(args.dataset).exists():
        print(f"dataset not found at {args.dataset}", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-budget-"))
    base = [*args.overrides, f"train.workers={args.workers}", f"train.time_budget_s={args.budget}"]
    cli.init_ray(None, min_cpus=args.workers + 2)
    import_dataset(args.format, args.dataset, str(work / "raw"), overwrite=True)
    prepare_dataset(str(work / "raw"), str(work / "prepared"), load_config(None, base).data)
    rows = []
    for fitted in (name == "fitted" for name in args.schedules):
        config = load_config(None, [*base, f"train.budget_schedule={str(fitted).lower()}"])
        run = work / f"run-{'fitted' if fitted else 'cut'}"
        rows.append(measure(work / "prepared", run, config, fitted, Path(args.dataset).name))
        print(json.dumps(rows[-1], sort_keys=True), flush=True)
    for row in rows:
        print(markdown_row(row))
    return 0


def measure(prepared: Path, run: Path, config, fitted: bool, dataset: str) -> dict:
    summary = train(str(prepared), str(run), config, overwrite=True)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = evaluate_run(str(run), "test")
    return {
        "date": date.today().isoformat(),
        "dataset": dataset,
        "schedule": (
            f"fitted, last {config.train.budget_cooldown:.0%} cool-down" if fitted else "cut"
        ),
        "budget_s": config.train.time_budget_s,
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "final_lr": lines[-1]["lr"],
        "train_s": summary.train_seconds,
        "valid_ndcg@10": round(summary.best_metrics["valid_ndcg@10"], 4),
        **{f"test_{k}": round(test[k], 4) for k in ("ndcg@10", "hr@10")},
    }


def markdown_row(r: dict) -> str:
    return (
        f"| {r['date']} | {r['dataset']} | {r['budget_s']:.0f} | {r['schedule']} "
        f"| {r['epochs']} ({r['best_epoch']}) | {r['final_lr']:.2e} | {r['valid_ndcg@10']} "
        f"| {r['test_ndcg@10']} | {r['test_hr@10']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
