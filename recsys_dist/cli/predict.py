"""Batch predictions from a trained run's model: ``recommend`` (histories given as events),
``score`` (every user of a prepared dataset), ``score-ratings`` (given user, item pairs), and
``export``, a smaller serving artefact of the model (int8 weights)."""

from __future__ import annotations

import argparse
from typing import Any

from recsys_dist import schema, storage
from recsys_dist.cli import common
from recsys_dist.cli.command import Command, done
from recsys_dist.cli.data import n

RANK_BY = ("score", "rating")  # recsys_dist.inference.predictor.RANK_BY, without torch


# --- recommend and score --------------------------------------------------------------------
def _recommend_arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub)
    sub.add_argument("--histories", required=True, help="Parquet events: user_id,item_id,timestamp")
    common.add(sub, "--k")
    sub.add_argument("--output", required=True, help="Parquet file: user_id, rank, item_id, score")
    common.add(sub, "--keep-seen")
    sub.add_argument(
        "--explain",
        action="store_true",
        help="add a 'because' column: the history events each item owes its score to "
        "(leave-one-out; costs one more forward pass over max_len sequences per user)",
    )
    sub.add_argument(
        "--rank-by",
        choices=RANK_BY,
        default="score",
        help="'rating': rank by predicted rating (a model trained with ratings); "
        "the score column is then the rating",
    )
    common.add_config_args(sub)  # on top of the run's own data and eval settings


def _predicts_ratings(model_dir: str) -> bool:
    """Whether an export has a rating head (its config.json says so; no weights loaded)."""
    return bool(storage.read_json(storage.join(model_dir, "config.json")).get("rating_head"))


def _run_recommend(args: argparse.Namespace):
    from recsys_dist.data.events import event_files

    model = common.run_inputs(args)
    event_files(args.histories)  # there, with Parquet files, before Ray starts
    from recsys_dist.inference.batch import recommend_histories

    if args.rank_by == "rating":
        common.require(
            not args.explain, "--explain explains next-item scores: not with --rank-by rating"
        )
        common.require(
            _predicts_ratings(model),
            f"--rank-by rating: {args.run}'s model was trained without ratings",
        )
    config = common.run_config(args, ["data", "eval"])
    common.init_ray(args.address)
    return recommend_histories(
        model,
        args.histories,
        args.output,
        args.k,
        exclude_seen=config.eval.exclude_seen,
        data=config.data,
        explain=args.explain,
        rank_by=args.rank_by,
    )


def _score_arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub)
    common.add(sub, "--data")
    common.add(sub, "--k")
    sub.add_argument("--output", required=True, help="Parquet file: user_id, rank, item_id, score")
    common.add(sub, "--keep-seen")
    common.add_config_args(sub)  # on top of the run's own eval settings


def _run_score(args: argparse.Namespace):
    model = common.run_inputs(args)
    from recsys_dist import run_layout
    from recsys_dist.inference.batch import score_prepared

    config = common.run_config(args, ["eval"])
    common.init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    return score_prepared(model, data, args.output, args.k, config.eval.exclude_seen)


def _recommend_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = [
        f"top-{args.k} for {n(r['users'])} users ({n(r['rows'])} rows) in {seconds:.1f} s",
        f"output: {r['output']}",
    ]
    if r.get("unknown_items_ignored"):
        lines.append(
            f"ignored {n(r['unknown_items_ignored'])} history item(s) the model does not know"
        )
    return lines


# --- score-ratings --------------------------------------------------------------------------
def _score_ratings_arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub)
    sub.add_argument("--pairs", required=True, help="Parquet file: user_id, item_id")
    common.add(sub, "--data")
    sub.add_argument(
        "--output",
        required=True,
        help="Parquet file: user_id, item_id, predicted_rating, history_events",
    )


def _run_score_ratings(args: argparse.Namespace):
    model = common.run_inputs(args)
    from recsys_dist import run_layout
    from recsys_dist.inference.rating_pairs import read_pairs, score_ratings

    pairs = read_pairs(args.pairs)  # a bad file is named before Ray starts
    common.init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    return score_ratings(model, data, pairs, args.output)


def _score_ratings_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = [
        f"predicted ratings of {n(r['pairs'])} pairs ({n(r['users'])} users) in {seconds:.1f} s",
        f"output: {r['output']}",
    ]
    if r.get("users_without_history"):
        cold = n(r["users_without_history"])
        lines.append(f"{cold} user(s) not in the dataset: rated from an empty history")
    if r.get("unknown_items"):
        lines.append(f"{n(r['unknown_items'])} pair(s) name an item the model does not know")
    return lines


# --- export ---------------------------------------------------------------------------------
def _export_arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub, other_export=False)
    sub.add_argument(
        "--quantize", required=True, choices=schema.QUANTIZATION_SCHEMES, help="the weights' format"
    )
    sub.add_argument("--output", required=True, help="the new export's directory")
    common.add(sub, "--overwrite")


def _run_export(args: argparse.Namespace):
    from recsys_dist import run_layout
    from recsys_dist.inference.quantize import export_quantized

    common.check_run(args.run)
    model = run_layout.model_dir(args.run)
    return export_quantized(model, args.output, args.quantize, overwrite=args.overwrite)


def _export_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return done(
        f"exported {r['model_version']} ({r['quantization']}) in {seconds:.1f} s: "
        f"{n(r['bytes'])} bytes, the fp32 export {n(r['source_bytes'])}",
        output=r["output"],
        then=f"serve --run {args.run} --model {r['output']}",
    )


COMMANDS = (
    Command(
        "recommend",
        "top-K for histories given as events",
        _run_recommend,
        _recommend_summary,
        _recommend_arguments,
        starts_ray=True,
    ),
    Command(
        "score",
        "top-K for every user of a prepared dataset",
        _run_score,
        _recommend_summary,
        _score_arguments,
        starts_ray=True,
    ),
    Command(
        "score-ratings",
        "predicted ratings of (user, item) pairs, from the users' histories",
        _run_score_ratings,
        _score_ratings_summary,
        _score_ratings_arguments,
        starts_ray=True,
    ),
    Command(
        "export",
        "a smaller serving artefact of a run's model: int8 weights (serve --model DIR)",
        _run_export,
        _export_summary,
        _export_arguments,
    ),
)
