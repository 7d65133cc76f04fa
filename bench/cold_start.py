"""Cold start from text: how items no training event showed rank, with and without item text.

MovieLens-100K with a random share of the items (10 %, seeded) held out of training: each
held-out item's events are kept only where the event is its user's last one, the
leave-one-out test target, and dropped everywhere else. The vocabulary (built from every kept
event) still holds them, but no training window and no validation row does (checked on the
prepared data). Then the default model trains twice with the same settings, ID-only and with
``model.item_text=true``, and this reports, for the test users whose target is a held-out
item, HR@10, NDCG@10 and the target's mean and median rank (full catalogue, seen items
excluded), beside the overall test NDCG@10 of each model (text must not lose there)::

    python bench/cold_start.py --workdir /tmp/bench-cold-start [--epochs 30] [--share 0.1]

Prints one JSON object (also written to ``WORKDIR/cold_start.json``) and a Markdown row per
model for ``docs/benchmarks.md``. Exits 2 with a message when the dataset is absent.
"""

from __future__ import annotations

import argparse
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
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist import cli, run_layout, schema  # noqa: E402
from recsys_dist.checkpoint import load_checkpoint  # noqa: E402
from recsys_dist.config import EvalConfig, load_config  # noqa: E402
from recsys_dist.data.importers import import_dataset  # noqa: E402
from recsys_dist.data.item_text import trained_items  # noqa: E402
from recsys_dist.data.prepare import prepare_dataset  # noqa: E402
from recsys_dist.data.prepared import read_split  # noqa: E402
from recsys_dist.data.vocab import Vocabulary  # noqa: E402
from recsys_dist.evaluation.evaluate import evaluate_run  # noqa: E402
from recsys_dist.evaluation.metrics import finalize_metrics  # noqa: E402
from recsys_dist.evaluation.ranking import evaluation_sums, model_scorer  # noqa: E402
from recsys_dist.train.trainer import train  # noqa: E402

ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"
MODELS = {
    "id_only": [],
    "item_text": ["model.item_text=true"],  # with the default model.text_id_dropout
    "item_text_no_id_dropout": ["model.item_text=true", "model.text_id_dropout=0"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ML100K), help="RecBole atomic files")
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("--share", type=float, default=0.1, help="items held out of training")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="which items are held out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    if not (Path(args.dataset) / "ml-100k.inter").exists():
        print(f"dataset not found at {args.dataset}: nothing to benchmark", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cold-start-"))
    overrides = [*args.overrides, f"train.epochs={args.epochs}", f"train.workers={args.workers}"]
    if args.gpu:
        overrides.append("train.use_gpu=true")
    config = load_config(None, overrides)
    cli.init_ray(None, min_cpus=args.workers + 2)
    import_dataset("recbole", args.dataset, str(work / "source"), overwrite=True)
    rng = np.random.default_rng(args.seed)
    held = hold_out(work / "source", work / "raw", args.share, rng)
    prepared = work / "prepared"
    prepare_dataset(str(work / "raw"), str(prepared), config.data)
    held_rows, checks = held_out_rows(prepared, held)
    result = {
        "date": date.today().isoformat(),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"),
        "share": args.share,
        "seed": args.seed,
        "epochs": args.epochs,
        "overrides": args.overrides,
        **checks,
    }
    for name, extra in ((name, MODELS[name]) for name in args.models):
        run_dir = work / f"run-{name}"
        started = time.perf_counter()
        summary = train(str(prepared), str(run_dir), load_config(None, [*overrides, *extra]))
        test = evaluate_run(str(run_dir), schema.TEST_SPLIT, EvalConfig())
        result[name] = {
            "best_epoch": summary.best_epoch,
            "epochs": summary.epochs,
            "seconds": round(time.perf_counter() - started, 1),
            "test_ndcg@10": round(test["ndcg@10"], 4),
            "test_hr@10": round(test["hr@10"], 4),
            "cold": cold_metrics(run_dir, prepared, held_rows),
        }
        print(json.dumps({name: result[name]}), flush=True)
    (work / "cold_start.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, sort_keys=True))
    for name in args.models:
        print(markdown_row(result, name))
    return 0


def hold_out(source: Path, output: Path, share: float, rng) -> list[str]:
    """Copy the dataset at ``source`` to ``output`` with ``share`` of the items (drawn with
    ``rng``) kept only as their users' last events; returns the held-out item ids.

    Events are written sorted by user and time, ties in their original order: the order
    ``prepare`` breaks ties in (file order), so "last" here is its test target too.
    """
    events = pq.read_table(source / schema.EVENTS_DIR)
    items = np.unique(events.column(schema.ITEM_ID).to_numpy(zero_copy_only=False))
    held = np.sort(rng.choice(items, size=int(round(share * len(items))), replace=False))
    frame = events.to_pandas().sort_values([schema.USER_ID, schema.TIMESTAMP], kind="stable")
    last = ~frame[schema.USER_ID].duplicated(keep="last").to_numpy()
    keep = ~frame[schema.ITEM_ID].isin(held).to_numpy() | last
    (output / schema.EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame[keep], schema=events.schema, preserve_index=False)
    pq.write_table(table, output / schema.EVENTS_DIR / "part-0.parquet")
    shutil.copytree(source / schema.ITEMS_DIR, output / schema.ITEMS_DIR, dirs_exist_ok=True)
    return held.tolist()


def held_out_rows(prepared: Path, held: list[str]) -> tuple[np.ndarray, dict]:
    """The held-out items' vocabulary indices, and the checks that training never sees them:
    none is in a training window or a validation row, and some are test targets."""
    vocab = Vocabulary.load(str(prepared / schema.VOCAB_FILE))
    indices = vocab.to_indices(pa.array(held))
    indices = indices[indices >= schema.NUM_SPECIAL_TOKENS]  # items with a kept event
    trained = trained_items(str(prepared), vocab.size)
    valid = read_split(str(prepared), schema.VALID_SPLIT).to_pandas()
    test = read_split(str(prepared), schema.TEST_SPLIT).to_pandas()
    seen_in_valid = set(np.concatenate(valid[schema.ITEMS].to_list())) | set(
        valid[schema.TARGET_ITEM]
    )
    leaked = int(trained[indices].sum()) + len(seen_in_valid & set(indices.tolist()))
    if leaked:
        raise RuntimeError(f"{leaked} held-out items reach training or validation")
    targets = int(np.isin(test[schema.TARGET_ITEM], indices).sum())
    checks = {
        "held_items": len(held),
        "held_items_in_vocab": len(indices),
        "held_test_users": targets,
        "test_users": len(test),
        "trained_items": int(trained.sum()),
        "vocab_items": vocab.num_items,
    }
    return indices, checks


def cold_metrics(run_dir: Path, prepared: Path, held: np.ndarray) -> dict:
    """HR@10, NDCG@10 and the mean/median rank of the test targets that are held-out items
    (the evaluation's own ranking: full catalogue, seen items excluded); and the same among
    the held-out items alone (``among_cold``): whether the model picks the right new item
    for a slot a service keeps for new items."""
    model = load_checkpoint(run_layout.model_dir(str(run_dir))).model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    scorer = model_scorer(model, device)
    cold = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    cold[torch.as_tensor(held, device=device)] = True
    rows = _test_rows_with_target_in(prepared, held)  # read once, ranked twice
    full = _target_ranks(scorer, model.config, rows, device)
    among = _target_ranks(
        lambda inputs: scorer(inputs).masked_fill(~cold, float("-inf")),
        model.config,
        rows,
        device,
    )
    return {
        **full,
        "candidates": int(model.config.vocab_size - schema.NUM_SPECIAL_TOKENS),
        "among_cold": {**among, "candidates": len(held)},
    }


def _test_rows_with_target_in(prepared: Path, items: np.ndarray) -> list[dict]:
    """The test split's batches, only the rows whose target is one of ``items`` (few: a
    benchmark's held-out items), kept in memory so that each ranking reads none again."""
    split = read_split(str(prepared), schema.TEST_SPLIT)
    batches = split.iter_batches(batch_size=EvalConfig().batch_size, batch_format="numpy")
    return [_rows_with_target_in(batch, items) for batch in batches]


def _target_ranks(scorer, config, rows: list[dict], device) -> dict:
    eval_config = EvalConfig()
    ranks: list[torch.Tensor] = []
    sums = evaluation_sums(
        scorer,
        iter(rows),
        eval_config,
        config.max_len,
        config.num_time_buckets,
        device,
        event_ages=config.use_event_ages,
        rating_scale=config.rating_scale(),
        ranks=ranks,
    )
    metrics = finalize_metrics(sums)
    every = torch.cat(ranks).double()
    return {
        "users": int(metrics["count"]),
        "hr@1": round(float((every == 1).double().mean()), 4),
        "hr@10": round(metrics["hr@10"], 4),
        "ndcg@10": round(metrics["ndcg@10"], 4),
        "mean_rank": round(float(every.mean()), 1),
        "median_rank": float(every.median()),
    }


def _rows_with_target_in(batch: dict[str, np.ndarray], items: np.ndarray) -> dict:
    keep = np.isin(batch[schema.TARGET_ITEM], items)
    return {name: column[keep] for name, column in batch.items()}


def markdown_row(result: dict, name: str) -> str:
    r, cold = result[name], result[name]["cold"]
    among = cold["among_cold"]
    return (
        f"| {name} | {result['held_items_in_vocab']} ({cold['users']} users) "
        f"| {r['epochs']} ({r['best_epoch']}) | {cold['hr@10']} | {cold['ndcg@10']} "
        f"| {cold['mean_rank']} | {cold['median_rank']:g} "
        f"| {among['hr@1']} / {among['hr@10']} / {among['mean_rank']} | {r['test_ndcg@10']} |"
    )


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
