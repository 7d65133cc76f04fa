"""``interests`` (trajectories, drift, change points and forecasts per user) and ``report``
(one self-contained HTML page: training, metrics, interest trajectories)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from recsys_dist import storage
from recsys_dist.cli import common
from recsys_dist.cli.command import Command, done
from recsys_dist.cli.data import n


# --- interests ------------------------------------------------------------------------------
def _interests_arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub, other_export=False)
    common.add(sub, "--data")
    sub.add_argument(
        "--users", nargs="+", metavar="USER_ID", help="only these users (default: every user)"
    )
    sub.add_argument(
        "--output", help="directory for interests.parquet and groups.json (default: none)"
    )
    sub.add_argument(
        "--evaluate",
        action="store_true",
        help="fit the forecast on the validation future and score it and the baselines on "
        "the test future (saved as RUN/interests.json; done anyway when that file is missing)",
    )
    common.add_config_args(sub)


def _run_interests(args: argparse.Namespace):
    from recsys_dist import run_layout
    from recsys_dist.interests.evaluate import evaluate_interests
    from recsys_dist.interests.offline import analyse_users

    common.require(bool(args.output or args.evaluate), "give --output DIR, --evaluate, or both")
    common.check_run(args.run)
    evaluates = args.evaluate or not storage.exists(run_layout.interests_file(args.run))
    common.require(
        not (args.registry and evaluates),
        "a registry version is read-only: evaluate interests on the run before registering it",
    )
    common.check_prepared(args.data)
    config = common.config(args).interests
    common.init_ray(args.address)
    data = args.data or run_layout.prepared_dir_of(args.run)
    result: dict[str, Any] = {}
    if evaluates:
        result["evaluation"] = evaluate_interests(args.run, data, config)
    if args.output:
        result["analysis"] = asdict(analyse_users(args.run, data, args.output, config, args.users))
    return result


def _interests_summary(r: dict, args: Any, seconds: float) -> list[str]:
    lines = []
    analysis = r.get("analysis")
    if analysis:
        share = analysis["users_with_change_points"] / max(analysis["users"], 1)
        lines += [
            f"analysed {n(analysis['users'])} users in {analysis['groups']} interest groups: "
            f"mean drift {analysis['mean_drift']:.3f}, {share:.0%} with change points",
            f"output: {analysis['output']}",
        ]
    evaluation = r.get("evaluation")
    if evaluation:
        methods = evaluation["methods"]
        baselines = {k: v for k, v in methods.items() if k not in ("forecast", "model_only")}
        best = min(baselines, key=lambda k: baselines[k]["js"])
        forecast, baseline = methods["forecast"], baselines[best]
        lines.append(
            f"forecast vs the best baseline ({best}) on the test future: JS "
            f"{forecast['js']:.4f} vs {baseline['js']:.4f} (lower is better), top-group "
            f"accuracy {forecast['top_accuracy']:.3f} vs {baseline['top_accuracy']:.3f}"
        )
    return done(
        *lines, f"done in {seconds:.1f} s", then=f"report --run {args.run} --output report.html"
    )


# --- report ---------------------------------------------------------------------------------
def _report_arguments(sub: argparse.ArgumentParser) -> None:
    common.add(sub, "--run", required=True)
    common.add(sub, "--data")
    sub.add_argument("--output", required=True, help="the HTML file to write")
    sub.add_argument(
        "--num-users", type=common.NON_NEGATIVE, default=6, help="users drawn in detail"
    )
    common.add_config_args(sub)


def _run_report(args: argparse.Namespace):
    common.check_run(args.run)
    common.check_prepared(args.data)
    from recsys_dist.report.collect import collect_report
    from recsys_dist.report.html import render_report

    config = common.config(args)
    common.init_ray(args.address)
    data = collect_report(args.run, config, args.data, args.num_users)
    page = render_report(data)
    storage.write_text(args.output, page)
    return {"output": args.output, "bytes": len(page.encode()), "users": len(data.users)}


def _report_summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [
        f"wrote {r['output']} ({r['bytes'] / 1024:.0f} KiB, {r['users']} users drawn) "
        f"in {seconds:.1f} s",
        "open it in a browser",
    ]


COMMANDS = (
    Command(
        "interests",
        "interest trajectories, drift, change points and forecasts per user (Ray Data)",
        _run_interests,
        _interests_summary,
        _interests_arguments,
        starts_ray=True,
    ),
    Command(
        "report",
        "one self-contained HTML page: training, metrics, interest trajectories",
        _run_report,
        _report_summary,
        _report_arguments,
        starts_ray=True,
    ),
)
