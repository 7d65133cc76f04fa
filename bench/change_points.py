"""Change-point detection against the generator's ground truth: precision and recall.

Generates a drifting log (its ``users/`` records, per user, whether, when and from which
categories to which the interest shifted), groups every user's events by catalogue category
and runs :func:`recsys_dist.interests.drift.change_points` at several false-alarm rates.

* A detection on an abrupt user is a hit when it lies within ``--tolerance`` events of the
  planted switch (at most one hit per user); every other detection on abrupt or stable users
  is a false positive. Precision = hits / detections; recall = abrupt users with a hit.
* Gradual users drift over their whole timeline, so they have no single true change point:
  reported apart, as the share flagged.

    python bench/change_points.py --users 1500 --items 2000 --categories 20 --seed 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist.config import InterestConfig  # noqa: E402
from recsys_dist.data import synthetic  # noqa: E402
from recsys_dist.data.catalogue import read_categories  # noqa: E402
from recsys_dist.data.vocab import Vocabulary  # noqa: E402
from recsys_dist.interests.drift import change_points  # noqa: E402
from recsys_dist.interests.groups import build_groups  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--tolerance", type=int, default=5, help="events either side")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.01, 0.001])
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp(prefix="bench-cp-")) / "gen"
    sizes = dict(users=args.users, items=args.items, categories=args.categories, seed=args.seed)
    synthetic.generate_dataset(str(out), **sizes, overwrite=True)
    users = _user_events(out)
    truth = pq.read_table(out / synthetic.USERS_DIR).to_pandas().set_index("user_id")
    for rate in args.rates:
        result = _score(users, truth, InterestConfig(false_alarm_rate=rate), args.tolerance)
        print(json.dumps({"false_alarm_rate": rate, **sizes, **result}), flush=True)
    return 0


def _user_events(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each user's ``[E, G]`` category weights and event times, in time order."""
    categories = read_categories(str(out / "items"))
    ids = sorted(categories)
    vocab = Vocabulary(pa.array(ids), np.ones(len(ids), np.int64))
    groups = build_groups(vocab, categories, np.zeros((vocab.size, 1)), clusters=1)
    index = {item: k + 2 for k, item in enumerate(ids)}
    events = pq.read_table(out / "events").to_pandas()
    events["index"] = events["item_id"].map(index)
    return {
        user: (groups.of_events(rows["index"].to_numpy()), rows["timestamp"].to_numpy())
        for user, rows in events.groupby("user_id", sort=False)
    }


def _score(users, truth, config: InterestConfig, tolerance: int) -> dict:
    hits = false = found = abrupt = gradual = gradual_flagged = 0
    for user, (weights, times) in users.items():
        points = change_points(weights, times, config)
        kind = truth.loc[user, synthetic.DRIFT_KIND]
        if kind == "gradual":
            gradual += 1
            gradual_flagged += bool(points)
            continue
        if kind == "abrupt":
            abrupt += 1
            at = truth.loc[user, synthetic.SHIFT_EVENT]
            hit = any(abs(p.index - at) <= tolerance for p in points)
            found += hit
            hits += hit
            false += len(points) - hit
        else:
            false += len(points)
    return {
        "precision": round(hits / max(hits + false, 1), 3),
        "recall": round(found / max(abrupt, 1), 3),
        "gradual_flagged": round(gradual_flagged / max(gradual, 1), 3),
        "abrupt_users": abrupt,
        "stable_and_abrupt_detections": hits + false,
    }


if __name__ == "__main__":
    sys.exit(main())
