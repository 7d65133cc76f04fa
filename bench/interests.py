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
3. **Returns after a break** (``--skip-returns`` to leave out): a log where every user takes
   one long break and abrupt users come back with a new interest (``break_days``). Every
   fifth user is held out of training; both models then recommend for each held-out user at
   the moment they return, from their history before the break: NDCG@10 of the event that
   came, and the top-10's share in the user's new and old interests, by drift kind. Only the
   time-gap input can tell the model that this user has been away.

    python bench/interests.py [--workdir DIR] [--split window|time] [--drift-paths P]
        [--users N] [--skip-ml100k] [--skip-ablation] [--skip-returns] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli, run_layout, schema  # noqa: E402
from recsys_dist.config import EvalConfig, InterestConfig, load_config  # noqa: E402
from recsys_dist.data import synthetic  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.data.prepared import read_split  # noqa: E402
from recsys_dist.evaluation.metrics import seen_mask, target_ranks  # noqa: E402
from recsys_dist.evaluation.ranking import protocol  # noqa: E402
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
# Breaks of 30-60 days, against 30 minutes to 5 days between ordinary sessions.
BREAK_DAYS = 30.0
HELD_OUT_EVERY = 5  # users u0, u5, u10, ... never reach training in the returns bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--split", choices=sorted(SPLITS), default="window")
    parser.add_argument("--drift-paths", type=float, default=DRIFT_PATHS)
    parser.add_argument("--users", type=int, default=GENERATED["users"], help="generated users")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--skip-returns", action="store_true")
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
    if not args.skip_returns:
        results.append(_returns(work, sizes, args.drift_paths, suffix, split))
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
    if not Path(run_layout.model_dir(run)).exists():
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
    recommender = Recommender(run_layout.model_dir(trained["run"]))
    rows = read_split(trained["prepared"], schema.TEST_SPLIT).to_pandas()
    shifted = truth[truth[synthetic.DRIFT_KIND] != "stable"]
    rows = rows[rows[schema.USER_ID].isin(shifted.index)]
    started = shifted.loc[rows[schema.USER_ID], synthetic.SHIFT_START].to_numpy()
    rows = rows[rows[schema.TARGET_TIMESTAMP].to_numpy() > started]
    found = _means(_per_row(recommender, rows, shifted, catalogue))
    return {
        "users": int(rows[schema.USER_ID].nunique()),
        "rows": len(rows),
        "ndcg@10": found["ndcg@10"],
        "top10_share_in_new_interest": found["top10_share_in_new_interest"],
        "protocol": "test rows of gradual/abrupt users whose shift started before "
        "the target; " + protocol(EvalConfig(ks=(10,))),
    }


def _per_row(recommender: Recommender, rows: pd.DataFrame, truth, catalogue) -> pd.DataFrame:
    """Per row of ``rows`` (split-row columns, item indices): NDCG@10 of the target (full
    ranking, seen items excluded) and the top-10's share in the user's new
    (``to_categories``) and old (``from_categories``) interest (NaN where there is none)."""
    found = []
    for start in range(0, len(rows), 256):
        part = rows.iloc[start : start + 256]
        histories = [np.asarray(h, np.int64) for h in part[schema.ITEMS]]
        seen = [torch.as_tensor(h, device=recommender.device) for h in histories]
        scores = recommender.next_item_scores(
            histories,
            list(part[schema.TIMESTAMPS]),
            part[schema.TARGET_TIMESTAMP].to_numpy(np.int64),
        )
        targets = torch.as_tensor(part[schema.TARGET_ITEM].to_numpy(np.int64))
        ranks = target_ranks(scores, targets.to(scores.device), seen).cpu().numpy()
        scores = scores.masked_fill(
            seen_mask(seen, len(part), scores.shape[1], scores.device), -np.inf
        )
        top = torch.topk(scores, 10, dim=1).indices.cpu().numpy()
        for user, rank, items in zip(part[schema.USER_ID], ranks, top, strict=True):
            ids = recommender.vocab.to_item_ids(items).to_pylist()
            primary = catalogue.primary[[int(i[1:]) for i in ids]]
            row = {"ndcg@10": 1 / np.log2(rank + 1) if rank <= 10 else 0.0}
            for name, column in (
                ("new", synthetic.TO_CATEGORIES),
                ("old", synthetic.FROM_CATEGORIES),
            ):
                interest = truth.loc[user, column]
                row[f"top10_share_in_{name}_interest"] = (
                    np.nan
                    if interest is None
                    else np.isin(primary, [int(c[4:]) for c in interest]).mean()
                )
            found.append(row)
    return pd.DataFrame(found, index=rows.index)


def _means(found: pd.DataFrame) -> dict:
    return {
        name: round(float(column.mean()), 4)
        for name, column in found.items()
        if column.notna().any()
    }


def _paired(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """first - second per metric: mean and 95% interval (normal approximation), as in
    ``forecast_minus_baseline``, so a difference can be told from noise."""
    out = {}
    for name in first.columns:
        difference = (first[name] - second[name]).dropna()
        if len(difference) > 1:
            mean, half = difference.mean(), 1.96 * difference.std() / np.sqrt(len(difference))
            out[name] = [round(float(v), 4) for v in (mean - half, mean, mean + half)]
    return out


def _returns(work: Path, sizes: dict, drift_paths: float, suffix: str, split: list) -> dict:
    """Both models on held-out users at the moment they come back from their long break."""
    raw, train_raw = work / "returns-raw", work / "returns-train-raw"
    if not raw.exists():
        synthetic.generate_dataset(
            str(raw), **sizes, drift_paths=drift_paths, break_days=BREAK_DAYS
        )
    events = pq.read_table(raw / schema.EVENTS_DIR).to_pandas()
    number = events[schema.USER_ID].str[1:].astype(int)
    held_out = number % HELD_OUT_EVERY == 0
    if not train_raw.exists():
        (train_raw / schema.EVENTS_DIR).mkdir(parents=True)
        kept = pa.Table.from_pandas(events[~held_out], schema.EVENT_SCHEMA, preserve_index=False)
        pq.write_table(kept, train_raw / schema.EVENTS_DIR / "part-00000.parquet")
        shutil.copytree(raw / schema.ITEMS_DIR, train_raw / schema.ITEMS_DIR)
    runs = {
        "time-aware": _trained(train_raw, work / f"returns{suffix}", split),
        "no time gaps": _trained(
            train_raw, work / f"returns{suffix}-no-time", [*split, "model.use_time_gaps=false"]
        ),
    }
    truth = pq.read_table(raw / synthetic.USERS_DIR).to_pandas().set_index(schema.USER_ID)
    catalogue = synthetic.build_catalogue(sizes["items"], sizes["categories"], sizes["seed"])
    out = {"bench": "returns", "dataset": f"generated (break_days={BREAK_DAYS:g})"}
    recommenders = {name: Recommender(run_layout.model_dir(t["run"])) for name, t in runs.items()}
    # Both runs prepared the same log, so they share a vocabulary and score the same rows.
    rows = _return_rows(events[held_out], truth, recommenders["time-aware"])
    kinds = truth.loc[rows[schema.USER_ID], synthetic.DRIFT_KIND].to_numpy()
    found = {}
    for name, trained in runs.items():
        found[name] = _per_row(recommenders[name], rows, truth, catalogue)
        out[name] = {**_facts(trained), "held_out_users": len(rows)}
        for kind in synthetic.DRIFT_KINDS:
            out[name][kind] = {
                "users": int((kinds == kind).sum()),
                **_means(found[name][kinds == kind]),
            }
    out["time_aware_minus_no_time"] = {
        kind: _paired(found["time-aware"][kinds == kind], found["no time gaps"][kinds == kind])
        for kind in synthetic.DRIFT_KINDS
    }
    out["protocol"] = (
        f"every {HELD_OUT_EVERY}th user held out of training; each is scored once, at the "
        "first event after their break, from the events before it; "
        + protocol(EvalConfig(ks=(10,)))
    )
    return out


def _return_rows(events: pd.DataFrame, truth, recommender: Recommender) -> pd.DataFrame:
    """One split-style row per user: history before the break, target the first event after."""
    rows = []
    ordered = events.sort_values([schema.USER_ID, schema.TIMESTAMP], kind="stable")
    for user, mine in ordered.groupby(schema.USER_ID, sort=False):
        at = int(truth.loc[user, synthetic.BREAK_EVENT])
        items = recommender.vocab.lookup(mine[schema.ITEM_ID].to_numpy())
        times = mine[schema.TIMESTAMP].to_numpy(np.int64)
        if (items[: at + 1] < 0).any():  # an item no training user ever touched
            continue
        rows.append(
            {
                schema.USER_ID: user,
                schema.ITEMS: items[:at].astype(np.int32),
                schema.TIMESTAMPS: times[:at],
                schema.TARGET_ITEM: int(items[at]),
                schema.TARGET_TIMESTAMP: int(times[at]),
            }
        )
    return pd.DataFrame(rows)


def _facts(trained: dict) -> dict:
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, 2 Ray Train workers",
        "overrides": trained["overrides"],
    }


if __name__ == "__main__":
    sys.exit(main())
