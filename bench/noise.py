"""Robustness to noisy behaviour: random events injected into the training histories.

MovieLens-100K with a share (10 %, 20 %) of each user's training events added as noise: a
uniformly random item at a random time between the user's first event and the validation
target, so the held-out events stay the user's last two and stay clean. Ratings are dropped
(implicit feedback, where noise matters; and an unrated noise event among rated ones would
give itself away). For each noise level the model trains without and with the mitigation
(``train.denoise_drop``: Truncated Cross-Entropy), on the same prepared data, a fixed number
of epochs (no time budget, so a busy machine changes the time, not the result), and test
NDCG@10 is reported with the popularity baseline's::

    python bench/noise.py --workdir /tmp/bench-noise [--levels 0 0.1 0.2] [--drop 0.2]
        [--draw uniform|popularity]

Prints one JSON object per run and the Markdown rows for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli, schema  # noqa: E402
from recsys_dist.config import EvalConfig, load_config  # noqa: E402
from recsys_dist.data.importers import import_dataset  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402

ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ML100K), help="RecBole atomic files")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--drop", type=float, default=0.2, help="train.denoise_drop when on")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--draw",
        choices=["uniform", "popularity"],
        default="uniform",
        help="noise items: uniformly, or as often as the log holds them (accidental clicks "
        "land where clicks are)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    if not Path(args.dataset).exists():
        print(f"dataset not found at {args.dataset}", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-noise-"))
    cli.init_ray(None, min_cpus=4)
    import_dataset("recbole", args.dataset, str(work / "raw"), overwrite=True)
    events = pq.read_table(work / "raw" / schema.EVENTS_DIR).drop_columns([schema.RATING])
    rows = []
    for level in args.levels:
        noisy = work / (f"noise-{level:g}" + ("" if args.draw == "uniform" else f"-{args.draw}"))
        rng = np.random.default_rng(args.seed)
        added = write_noisy(events, level, noisy / "raw", rng, args.draw)
        config = load_config(None, [*args.overrides, f"train.epochs={args.epochs}"])
        prepare_dataset(str(noisy / "raw"), str(noisy / "prepared"), config.data)
        for drop in (0.0, args.drop) if args.drop else (0.0,):
            overrides = [
                *args.overrides,
                f"train.epochs={args.epochs}",
                f"train.denoise_drop={drop}",
            ]
            result = run(noisy, load_config(None, overrides), drop)
            result.update(noise=level, noise_events=added, draw=args.draw)
            print(json.dumps(result, sort_keys=True), flush=True)
            rows.append(result)
    for row in rows:
        print(markdown_row(row, rows))
    return 0


def write_noisy(events: pa.Table, share: float, output: Path, rng, draw: str = "uniform") -> int:
    """``events`` plus ``share`` x each user's training events of noise; returns how many.

    ``draw``: each noise item uniformly from the catalogue, or by popularity (each event of
    the log equally likely, so items as often as the log holds them)."""
    frame = events.to_pandas().sort_values([schema.USER_ID, schema.TIMESTAMP], kind="stable")
    items = frame[schema.ITEM_ID].unique()
    counts = frame[schema.ITEM_ID].value_counts().reindex(items).to_numpy()
    chance = counts / counts.sum() if draw == "popularity" else None
    noise = []
    for user, group in frame.groupby(schema.USER_ID, sort=False):
        times = group[schema.TIMESTAMP].to_numpy()
        count = int(round(share * max(len(times) - 2, 0)))
        if count == 0 or len(times) < 3:
            continue
        latest = max(times[0], times[-2] - 1)  # before the validation target
        noise.append(
            {
                schema.USER_ID: [user] * count,
                schema.ITEM_ID: rng.choice(items, count, p=chance).tolist(),
                schema.TIMESTAMP: rng.integers(times[0], latest + 1, count).tolist(),
            }
        )
    tables = [events.select([schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP])]
    tables += [pa.table(n).cast(tables[0].schema) for n in noise]
    (output / schema.EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), output / schema.EVENTS_DIR / "part-0.parquet")
    return sum(len(n[schema.USER_ID]) for n in noise)


def run(noisy: Path, config, drop: float) -> dict:
    """Train on the noisy dataset with ``config`` and evaluate on its (clean) test targets."""
    run_dir = noisy / f"run-drop-{drop:g}"
    started = time.perf_counter()
    summary = train(str(noisy / "prepared"), str(run_dir), config)
    test = evaluate_run(str(run_dir), "test", EvalConfig())
    return {
        "date": date.today().isoformat(),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "denoise_drop": drop,
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "seconds": round(time.perf_counter() - started, 1),
        "test_ndcg@10": round(test["ndcg@10"], 4),
        "test_hr@10": round(test["hr@10"], 4),
        "popularity_ndcg@10": round(test["baseline_popularity"]["ndcg@10"], 4),
    }


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def markdown_row(row: dict, rows: list[dict]) -> str:
    """One table row; the change is against the same mitigation setting without noise."""
    clean = [r for r in rows if r["noise"] == 0 and r["denoise_drop"] == row["denoise_drop"]]

    def change(key: str) -> str:
        if not clean or not row["noise"]:
            return ""
        return f"{(row[key] - clean[0][key]) / clean[0][key]:+.1%}"

    return (
        f"| {row['noise']:.0%} | {row['noise_events']} | {row['denoise_drop']} | "
        f"{row['epochs']} ({row['best_epoch']}) | {row['test_ndcg@10']} | {row['test_hr@10']} | "
        f"{change('test_ndcg@10')} | {row['popularity_ndcg@10']} | "
        f"{change('popularity_ndcg@10')} |"
    )


if __name__ == "__main__":
    sys.exit(main())
