"""``evaluate``: HR/NDCG/MRR@5/10/20 of a trained run, beside the popularity baseline."""

from __future__ import annotations

import argparse
from typing import Any

from recsys_dist import schema, storage
from recsys_dist.cli import common
from recsys_dist.cli.command import Command
from recsys_dist.config import SAMPLINGS


def _arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub)
    sub.add_argument(
        "--split",
        default=schema.TEST_SPLIT,
        choices=(schema.VALID_SPLIT, schema.TEST_SPLIT),
        help="the held-out events to rank",
    )
    common.add(sub, "--data")
    common.add(sub, "--keep-seen")
    sub.add_argument(
        "--sampled",
        type=common.NON_NEGATIVE,
        metavar="N",
        help="rank against N sampled negatives instead of the full catalogue (0) "
        "(default: the run's eval.sampled_negatives)",
    )
    sub.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        help="how negatives are sampled (default: the run's eval.sampling)",
    )
    sub.add_argument("--output", help="also write the metrics to this JSON file (default: none)")
    common.add_config_args(sub)  # on top of the run's own eval settings (RUN/config.yaml)


def _run(args: argparse.Namespace):
    model = common.run_inputs(args)
    from recsys_dist.evaluation.evaluate import evaluate_run

    config = common.run_config(
        args,
        ["eval"],
        **{"eval.sampled_negatives": args.sampled, "eval.sampling": args.sampling},
    )
    common.init_ray(args.address)
    result = evaluate_run(args.run, args.split, config.eval, args.data, model)
    if args.output:  # the numbers, for a pipeline step or a dashboard to pick up
        storage.write_json(args.output, result)
    return result


def _summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [format_metrics_table(r)]


def format_metrics_table(result: dict[str, Any]) -> str:
    """HR/NDCG/MRR rows by K for the model and the popularity baseline, with the protocol."""
    ks = sorted({int(k.split("@")[1]) for k in result if "@" in k})
    header = f"{'':12}" + "".join(f"{f'{m}@{k}':>10}" for m in ("hr", "ndcg", "mrr") for k in ks)
    lines = [f"{result['split']} split, {result['users']} users, {result['protocol']}", header]
    rows = (("model", result), ("popularity", result["baseline_popularity"]))
    for name, metrics in rows:
        values = "".join(f"{metrics[f'{m}@{k}']:>10.4f}" for m in ("hr", "ndcg", "mrr") for k in ks)
        lines.append(f"{name:12}{values}")
    if "beyond_accuracy" in result:
        label = f"beyond accuracy, top-{result['beyond_accuracy']['k']}:"
        lines.append(label + "".join(f"{h:>12}" for h in _BEYOND.values()))
        for name, metrics in rows:
            figures = metrics["beyond_accuracy"]
            cells = "".join(f"{_figure(figures[key]):>12}" for key in _BEYOND)
            lines.append(f"{name:{len(label)}}{cells}")
    lines += _ratings_lines(result.get("ratings"))
    return "\n".join(lines)


def _ratings_lines(ratings: dict[str, Any] | None) -> list[str]:
    """RMSE/MAE of the model and the rating baselines (a model with a rating head)."""
    if not ratings or "model" not in ratings:
        return []
    rows = {"model": ratings["model"], **ratings["baselines"]}
    lines = [f"ratings, {ratings['rated_targets']:,} held-out events:{'rmse':>10}{'mae':>10}"]
    width = len(lines[0]) - 20
    lines += [f"{name:{width}}{e['rmse']:>10.4f}{e['mae']:>10.4f}" for name, e in rows.items()]
    return lines


# Beyond-accuracy columns (recsys_dist/evaluation/beyond.py): key -> header.
_BEYOND = {
    "coverage": "coverage",
    "popularity_percentile": "pop. pctl",
    "exposure_gini": "gini",
    "novelty": "novelty",
    "intra_list_diversity": "diversity",
}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


COMMANDS = (
    Command(
        "evaluate",
        "HR/NDCG/MRR@5/10/20 of a trained run",
        _run,
        _summary,
        _arguments,
        starts_ray=True,
        description=f"{__doc__}\nSettings start from the run's own (RUN/config.yaml).",
    ),
)
