"""Interest forecasts against baselines, and the time-aware ablation (issue 5).

1. **Forecast vs baselines** on a generated drifting log and on MovieLens-100K genres: each is
   prepared with a held-out future window per user (``--split window``: leave-10-out, every
   user's last 10 events are the test future and the 10 before the validation future) or the
   global ``time`` split (``--split time``: only users active after the cut count), a model is
   trained with the default config, and
   :func:`recsys_dist.interests.evaluate.evaluate_interests` scores the forecast, the model
   alone, and the last-window, long-term and decayed profiles on the test future (JS
   divergence and top-group accuracy; blend and half-life fitted on the validation future).
2. **Ablation** on the generated log: the same model trained without the time-gap input, on
   test rows of users whose interest shifted (the generator's ground truth) before the
   target: next-item NDCG@10 (full ranking, seen items excluded) and the share of the top-10
   whose primary category is in the user's new interest.

    python bench/interests.py [--workdir DIR] [--split window|time] [--drift-paths P]
        [--users N] [--skip-ml100k] [--skip-ablation] [--epochs N]
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
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli, schema  # noqa: E402
from recsys_dist.config import EvalConfig, InterestConfig, load_config  # noqa: E402
from recsys_dist.data import synthetic  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.data.prepared import read_split  # noqa: E402
from recsys_dist.evaluation.ranking import evaluation_sums, model_scorer, protocol  # noqa: E402
from recsys_dist.inference.predictor import Recommender  # noqa: E402
from recsys_dist.interests.evaluate import evaluate_interests  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402

ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"
# Protocols (``--split``): ``window`` holds out every user's last 10 events as the test future
# and the 10 before as the validation future (leave-10-out), so every user has a future
# window; ``time`` cuts globally, so only users active after the cut have one.
SPLITS = {
    "window": ("-l10", ["data.split=loo", "data.holdout_events=10", "train.workers=2"]),
    "time": ("", ["data.split=time", "train.workers=2"]),
}
# Users start within 60 days, so most timelines cross the time split's cuts.
GENERATED = dict(users=3000, items=1000, categories=20, seed=0, start_days=60)
# Drifting users' new interests mostly follow the catalogue's common paths (``--drift-paths``):
# with 0 where an interest goes is unforecastable by construction.
DRIFT_PATHS = 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--split", choices=sorted(SPLITS), default="window")
    parser.add_argument("--drift-paths", type=float, default=DRIFT_PATHS)
    parser.add_argument("--users", type=int, default=GENERATED["users"], help="generated users")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: config)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-interests-"))
    suffix, split = SPLITS[args.split]
    split = [*split, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    cli.init_ray(None, min_cpus=4)
    results = []
    sizes = {**GENERATED, "users": args.users}
    name = f"generated-paths{args.drift_paths:g}" + (
        f"-u{args.users}" if args.users != GENERATED["users"] else ""
    )
    generated = work / f"{name}-raw"
    synthetic.generate_dataset(
        str(generated), **sizes, drift_paths=args.drift_paths, overwrite=True
    )
    timed = _trained(generated, work / f"{name}{suffix}", split)
    results.append(_forecast(f"generated (drift_paths={args.drift_paths:g})", timed))
    if not args.skip_ablation:
        untimed = _trained(
            generated, work / f"{name}{suffix}-no-time", [*split, "model.use_time_gaps=false"]
        )
        results.append(_ablation(generated, {"time-aware": timed, "no time gaps": untimed}))
    if not args.skip_ml100k and (ML100K / "ml-100k.inter").exists():
        from recsys_dist.data.importers import import_dataset

        if not (work / "ml100k-raw").exists():
            import_dataset("recbole", str(ML100K), str(work / "ml100k-raw"), overwrite=True)
        results.append(
            _forecast("ml-100k", _trained(work / "ml100k-raw", work / f"ml100k{suffix}", split))
        )
    for result in results:
        print(json.dumps(result, sort_keys=True), flush=True)
    return 0


def _trained(raw: Path, out: Path, overrides: list[str]) -> dict:
    """Prepare and train (reusing a model already in ``out``); the run's facts."""
    config = load_config(None, overrides)
    run = out / "run"
    if not (run / "model").exists():
        prepare_dataset(str(raw), str(out / "prepared"), config.data)
        started = time.perf_counter()
        train(str(out / "prepared"), str(run), config)
        print(f"trained {run} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return {"run": str(run), "prepared": str(out / "prepared"), "overrides": overrides}


def _forecast(name: str, trained: dict) -> dict:
    result = evaluate_interests(trained["run"], trained["prepared"], InterestConfig())
    return {"bench": "forecast", "dataset": name, **_facts(trained), **result}


def _ablation(raw: Path, runs: dict[str, dict]) -> dict:
    truth = pq.read_table(raw / synthetic.USERS_DIR).to_pandas().set_index(schema.USER_ID)
    catalogue = synthetic.build_catalogue(GENERATED["items"], GENERATED["categories"], 0)
    out = {"bench": "ablation", "dataset": "generated"}
    for name, trained in runs.items():
        out[name] = {**_facts(trained), **_shifted_users_metrics(trained, truth, catalogue)}
    return out


def _shifted_users_metrics(trained: dict, truth, catalogue) -> dict:
    """NDCG@10 and the share of top-10 in the new interest, on shifted users' test rows."""
    recommender = Recommender(str(Path(trained["run"]) / "model"))
    rows = read_split(trained["prepared"], schema.TEST_SPLIT).to_pandas()
    shifted = truth[truth[synthetic.DRIFT_KIND] != "stable"]
    rows = rows[rows[schema.USER_ID].isin(shifted.index)]
    started = shifted.loc[rows[schema.USER_ID], synthetic.SHIFT_START].to_numpy()
    rows = rows[rows[schema.TARGET_TIMESTAMP].to_numpy() > started]
    model, eval_config = recommender.model, EvalConfig(ks=(10,))
    batches = [
        {k: rows[k].to_numpy() for k in rows.columns}
        for rows in (rows.iloc[i : i + 256] for i in range(0, len(rows), 256))
    ]
    sums = evaluation_sums(
        model_scorer(model, recommender.device),
        batches,
        eval_config,
        model.config.max_len,
        model.config.num_time_buckets,
        recommender.device,
    )
    share = []
    for batch in batches:
        top = recommender.recommend(
            [recommender.vocab.to_item_ids(h).to_pylist() for h in batch[schema.ITEMS]],
            list(batch[schema.TIMESTAMPS]),
            np.asarray(batch[schema.TARGET_TIMESTAMP], np.int64),
            ks=[10] * len(batch[schema.ITEMS]),
        )
        for user, items in zip(batch[schema.USER_ID], top.item_ids, strict=True):
            new = {int(c[4:]) for c in shifted.loc[user, synthetic.TO_CATEGORIES]}
            share.append(np.isin(catalogue.primary[[int(i[1:]) for i in items]], list(new)).mean())
    return {
        "users": int(rows[schema.USER_ID].nunique()),
        "rows": len(rows),
        "ndcg@10": round(sums["ndcg@10"] / sums["count"], 4),
        "top10_share_in_new_interest": round(float(np.mean(share)), 4),
        "protocol": "test rows of gradual/abrupt users whose shift started before "
        "the target; " + protocol(eval_config),
    }


def _facts(trained: dict) -> dict:
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, 2 Ray Train workers",
        "overrides": trained["overrides"],
    }


if __name__ == "__main__":
    sys.exit(main())
