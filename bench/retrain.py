"""Retraining benchmark: a warm-started candidate vs a model trained from scratch.

A generated log (``recsys-dist generate``: users whose interests drift) is cut by event time,
at ``--cut`` of its events: the first period is the first model's data; the second is what
arrives after it, where the users whose interests shift after the cut shift, and
``--new-items`` of the catalogue (items with no event in the first period) appear. Then one
``retrain`` turn: the candidate starts from the first model (warm start, ``retrain.epochs``),
passes the gate or not; beside it, a model with the first model's settings is trained from
scratch on the same grown dataset.
Both are ranked on the same newest held-out events (the test split's events after the cut,
full catalogue), and both validate on the newest window too (``eval.targets_after``).

Reported: NDCG@10 vs training seconds for both (validation after every epoch; seconds in
training steps, and wall seconds with every validation and checkpoint), the seconds each
needs to reach the scratch model's final validation NDCG@10 on both clocks, both test
figures, the new items' share of the candidate's top-10 recommendations, and the gate's
decision; then a second turn on corrupted events (the second period with its items
shuffled), which the gate must refuse. One JSON object, then Markdown rows for
``docs/benchmarks.md``::

    python bench/retrain.py --workdir /tmp/bench-retrain train.epochs=30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli, run_layout, schema  # noqa: E402
from recsys_dist.config import RetrainConfig, load_config  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.data.synthetic import SHIFT_START, generate_dataset  # noqa: E402
from recsys_dist.data.vocab import Vocabulary  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.inference.batch import score_prepared  # noqa: E402
from recsys_dist.registry import Registry  # noqa: E402
from recsys_dist.retrain import PREPARED_DIR, retrain  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402

METRIC = "ndcg@10"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument(
        "--cut", type=float, default=0.8, help="first period: this share of the events, oldest"
    )
    parser.add_argument("--new-items", type=float, default=0.1)
    parser.add_argument(
        "--warm-epochs", type=int, default=RetrainConfig().epochs, help="retrain.epochs"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value for both full trainings (retrain.* for the turn)",
    )
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-retrain-"))
    if work.exists() and any(work.iterdir()):
        print(f"--workdir {work}: not empty (the benchmark starts from nothing)", file=sys.stderr)
        return 2
    overrides = [*args.overrides, f"train.workers={args.workers}", "train.eval_every=1"]
    config = load_config(None, overrides)
    cli.init_ray(None, min_cpus=args.workers + 2)
    periods = two_periods(work, args)
    registry = Registry(str(work / "registry"))
    first = train_first(periods["first"], work, config, registry)
    # Both curves on the newest window: the validation events after the cut, as the gate.
    cut = periods["facts"]["cut"]
    window = dataclasses.replace(config, eval=dataclasses.replace(config.eval, targets_after=cut))
    turn_overrides = [o for o in args.overrides if o.startswith("retrain.")]  # the turn's own
    turn_overrides += [f"retrain.epochs={args.warm_epochs}", f"eval.targets_after={cut}"]
    second = warm_vs_scratch(periods["second"], work, window, registry, turn_overrides)
    corrupted = retrain(
        registry.root, [str(periods["corrupted"])], str(work / "retraining"), turn_overrides
    )
    grown = str(work / "retraining" / PREPARED_DIR)
    popularity = evaluate_run(registry.current().path, "test", data_dir=grown)
    corrupted["current_metrics"]["popularity"] = popularity["baseline_popularity"][METRIC]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "overrides": args.overrides,
        "warm_epochs": args.warm_epochs,
        **periods["facts"],
        "first": first,
        "second": second,
        "corrupted": {
            k: corrupted[k] for k in ("promoted", "reason", "candidate_metrics", "current_metrics")
        },
    }
    print(json.dumps(result, sort_keys=True))
    print(markdown_row(result))
    return 0


def two_periods(work: Path, args) -> dict:
    """``work/first`` and ``work/second`` (one event folder each, the catalogue beside the
    first) and ``work/corrupted`` (the second's events, items shuffled among them)."""
    generated = work / "generated"
    generate_dataset(str(generated), users=args.users, items=args.items, seed=1, start_days=30)
    events = pq.read_table(generated / schema.EVENTS_DIR).sort_by(schema.TIMESTAMP)
    times = events.column(schema.TIMESTAMP).to_numpy()
    cut = int(times[int(args.cut * (len(times) - 1))])
    rng = np.random.default_rng(0)
    item_ids = pq.read_table(generated / schema.ITEMS_DIR).column(schema.ITEM_ID)
    new = pa.array(rng.choice(item_ids.to_numpy(False), int(args.new_items * len(item_ids)), False))
    early = pc.less(events.column(schema.TIMESTAMP), cut)
    first = events.filter(pc.and_(early, pc.invert(pc.is_in(events[schema.ITEM_ID], new))))
    second = events.filter(pc.invert(early))
    shuffled = second.column(schema.ITEM_ID).take(rng.permutation(second.num_rows))
    corrupted = second.set_column(1, schema.ITEM_ID, shuffled)
    corrupted = corrupted.set_column(  # a later turn: after the second period
        2, schema.TIMESTAMP, pc.add(corrupted[schema.TIMESTAMP], int(times[-1] - cut + 1))
    )
    folders = {}
    for name, table in (("first", first), ("second", second), ("corrupted", corrupted)):
        folders[name] = work / name
        (work / name / schema.EVENTS_DIR).mkdir(parents=True)
        pq.write_table(table, work / name / schema.EVENTS_DIR / "part-00000.parquet")
    shutil.copytree(generated / schema.ITEMS_DIR, work / "first" / schema.ITEMS_DIR)
    users = pq.read_table(generated / "users")
    shifting = pc.sum(pc.greater_equal(users[SHIFT_START], cut)).as_py() or 0
    active = pc.count_distinct(second[schema.USER_ID]).as_py()
    folders["facts"] = {
        "users": args.users,
        "items": args.items,
        "cut": cut,
        "first_events": first.num_rows,
        "second_events": second.num_rows,
        "second_active_users": active,
        "users_shifting_in_second": shifting,
        "new_items": len(new),
        "second_new_item_event_share": round(
            pc.sum(pc.is_in(second[schema.ITEM_ID], new)).as_py() / second.num_rows, 4
        ),
    }
    return folders


def train_first(folder: Path, work: Path, config, registry: Registry) -> dict:
    prepared, run = work / "prepared-first", work / "runs" / "first"
    prepare_dataset(str(folder), str(prepared), config.data)
    summary = train(str(prepared), str(run), config)
    version = registry.register(str(run))
    registry.promote(version.id)
    return {"version": version.id, "train_s": summary.train_seconds, "epochs": summary.epochs}


def warm_vs_scratch(folder: Path, work: Path, config, registry: Registry, overrides) -> dict:
    """One ``retrain`` turn over ``folder`` and, on the grown dataset, a model from scratch."""
    known = Vocabulary.load(str(work / "prepared-first" / schema.VOCAB_FILE)).item_ids
    turn = retrain(registry.root, [str(folder)], str(work / "retraining"), overrides)
    grown = work / "retraining" / PREPARED_DIR
    scratch_run = work / "runs" / "scratch"
    scratch = train(str(grown), str(scratch_run), config)
    scratch_test = evaluate_run(str(scratch_run), "test", data_dir=str(grown))
    warm_run = registry.get(turn["candidate"]).record["source_run"]  # the turn's own run
    warm_curve, scratch_curve = curve(warm_run), curve(scratch_run)
    warm_wall, scratch_wall = curve(warm_run, "elapsed_s"), curve(scratch_run, "elapsed_s")
    target = scratch_curve[-1][1]
    return {
        "promoted": turn["promoted"],
        "reason": turn["reason"],
        "new_items": turn["new_items"],
        "events": turn["events"],
        f"current_test_{METRIC}": round(turn["current_metrics"][METRIC], 4),
        f"warm_test_{METRIC}": round(turn["candidate_metrics"][METRIC], 4),
        f"scratch_test_{METRIC}": round(scratch_test[METRIC], 4),
        "warm_train_s": warm_curve[-1][0],
        "scratch_train_s": scratch_curve[-1][0],
        "scratch_epochs": scratch.epochs,
        f"scratch_final_valid_{METRIC}": target,
        "warm_s_to_scratch_valid": seconds_to(warm_curve, target),
        "scratch_s_to_scratch_valid": seconds_to(scratch_curve, target),
        "warm_wall_s_to_scratch_valid": seconds_to(warm_wall, target),
        "scratch_wall_s_to_scratch_valid": seconds_to(scratch_wall, target),
        "warm_curve": warm_curve,
        "scratch_curve": scratch_curve,
        "warm_wall_curve": warm_wall,
        "scratch_wall_curve": scratch_wall,
        "new_item_share_of_top10": new_item_share(
            registry.get(turn["candidate"]).model_dir, grown, known, work
        ),
        "scratch_new_item_share_of_top10": new_item_share(
            run_layout.model_dir(scratch_run), grown, known, work
        ),
    }


def curve(run: str | Path, clock: str = "train_s") -> list[tuple[float, float]]:
    """(seconds, validation NDCG@10) after every epoch. ``clock``: ``train_s``, the seconds
    in training steps (what the warm start saves), or ``elapsed_s``, since training started,
    with every validation and checkpoint (both runs validate after every epoch here, which a
    scheduled turn need not: the curve is drawn for the benchmark's sake)."""
    rows = run_layout.read_metrics(run)
    return [(round(r[clock], 1), round(r[f"valid_{METRIC}"], 4)) for r in rows]


def seconds_to(points: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, value in points if value >= target), None)


def new_item_share(model_dir: str, grown: Path, known, work: Path) -> float:
    """The share of a model's top-10 (every user of the grown data) that are new items."""
    out = str(work / "recommendations.parquet")
    score_prepared(model_dir, str(grown), out, k=10)
    recommended = pq.read_table(out, columns=[schema.ITEM_ID])[schema.ITEM_ID]
    return round(pc.mean(pc.invert(pc.is_in(recommended, value_set=known))).as_py(), 4)


def markdown_row(r: dict) -> str:
    s = r["second"]
    return (
        f"| {r['date']} | {r['users']} users, {r['new_items']} new items "
        f"({r['second_new_item_event_share']:.1%} of new events), "
        f"{r['users_shifting_in_second']} shifting | {s[f'current_test_{METRIC}']} "
        f"| {s[f'warm_test_{METRIC}']} ({s['warm_train_s']} s) "
        f"| {s[f'scratch_test_{METRIC}']} ({s['scratch_train_s']} s) "
        f"| {s['warm_s_to_scratch_valid']} s vs {s['scratch_s_to_scratch_valid']} s "
        f"(wall {s['warm_wall_s_to_scratch_valid']} s vs {s['scratch_wall_s_to_scratch_valid']} s) "
        f"| {s['new_item_share_of_top10']:.1%} "
        f"(scratch {s['scratch_new_item_share_of_top10']:.1%}) "
        f"| {'promoted' if s['promoted'] else 'kept out'}; "
        f"corrupted: {'promoted' if r['corrupted']['promoted'] else 'refused'} |"
    )


if __name__ == "__main__":
    sys.exit(main())
