"""The main job: generated drifting log → prepare → 2 DeepSpeed workers → evaluate → interests
→ report → recommend.

Runs on the embedded default (local Ray, local files) in a few minutes on 2 cores::

    python jobs/end_to_end.py --workdir runs/demo

On a cluster, from a machine that can reach the head node (the work directory must be a
mount shared by every node)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/end_to_end.py --workdir /mnt/runs/demo --workers 4

The work directory may also be on object storage, e.g. ``--workdir s3://bucket/runs/demo``;
S3 settings come from the AWS environment (``AWS_ENDPOINT_URL`` for MinIO), which every node
of a cluster needs too (see docs/architecture.md, "Object storage").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from recsys_dist import cli, run_layout, schema, storage  # noqa: E402

DEMO_OVERRIDES = ["train.epochs=30", "train.eval_every=5", "train.patience=3"]
FORECAST_ROWS = (  # the interest-forecast methods the summary compares, as named in the docs
    ("forecast", "forecast (model + decayed profile)"),
    ("decayed", "decayed profile"),
    ("last_window", "last window"),
    ("long_term", "long-term profile"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-v", "--verbose", action="store_true", help="the frameworks' logs too")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value config overrides")
    args = parser.parse_args(argv)
    work = args.workdir
    raw, prepared, run = (storage.join(work, name) for name in ("raw", "prepared", "run"))
    evaluation = storage.join(work, "evaluation.json")
    report = storage.join(work, "report.html")
    generate = ["generate", "--output", raw, "--num-users", str(args.users)]
    generate += ["--num-items", str(args.items)]
    steps = [
        # Interests shift along common paths between categories, which the forecast can learn.
        [*generate, "--drift-paths", "0.8"],
        # Each user's last 10 events are held out (the 10 before them for validation): the
        # ranking targets their first event, the interest forecast is scored on all ten.
        # Data settings are fixed here: training reads them from the dataset (data.* given
        # again to train must agree, so they go to both).
        [
            *("prepare", "--data", raw, "--output", prepared, "--holdout-events", "10"),
            *(override for override in args.overrides if override.startswith("data.")),
        ],
        [
            *("train", "--data", prepared, "--output", run, "--workers", str(args.workers)),
            *DEMO_OVERRIDES,
            *args.overrides,
        ],
        ["evaluate", "--run", run, "--split", "test", "--output", evaluation],
        ["interests", "--run", run, "--output", storage.join(work, "interests")],
        ["report", "--run", run, "--output", report],
    ]
    if storage.exists(raw):  # a fresh demo: new data, and a new run rather than resuming the old
        steps[0].append("--overwrite")
        steps[2].append("--overwrite")
    verbose = ["-v"] if args.verbose else []
    print(
        f"recsys_dist demo: {args.users} generated users whose interests drift, end to end "
        f"({args.workers} DeepSpeed workers on a local Ray; ~3.5 minutes on 2 cores)",
        flush=True,
    )
    started = time.perf_counter()
    # One Ray for every step, with a CPU to spare for Ray Data while each worker holds one.
    cli.init_ray(None, min_cpus=args.workers + 2)
    for step in steps:
        print(f"\n$ recsys-dist {shlex.join(step)}", flush=True)
        if cli.main([*step, *verbose]) != 0:
            return 1
    user, item = _sample_recommendations(raw, run, work, verbose)
    if user is None:
        return 1
    print(_closing_summary(work, run, evaluation, report, user, item, started))
    return 0


def _sample_recommendations(raw: str, run: str, work: str, verbose: list[str]):
    """Recommend for three users from their full logs and show their top 5; returns one of
    them and an item they have not seen, for the closing ``curl`` examples."""
    first_part = storage.list_files(storage.join(raw, schema.EVENTS_DIR), ".parquet")[0]
    with storage.open_input(first_part) as source:
        events = pq.read_table(source)
    users = events.column(schema.USER_ID).unique()[:3]
    histories = storage.join(work, "histories.parquet")
    with storage.open_output(histories) as sink:
        pq.write_table(events.filter(pc.is_in(events.column(schema.USER_ID), users)), sink)
    output = storage.join(work, "recommendations.parquet")
    step = ["recommend", "--run", run, "--histories", histories, "--k", "5", "--output", output]
    print(f"\n$ recsys-dist {shlex.join(step)}", flush=True)
    if cli.main([*step, *verbose]) != 0:
        return None, None
    with storage.open_input(output) as source:
        rows = pq.read_table(source).to_pylist()
    for user in users.to_pylist():
        top = [row[schema.ITEM_ID] for row in rows if row[schema.USER_ID] == user]
        print(f"  {user:>8}  top 5: {', '.join(top)}")
    user = users[0].as_py()
    seen = set(events.filter(pc.equal(events.column(schema.USER_ID), user))[schema.ITEM_ID])
    unseen = sorted(set(events.column(schema.ITEM_ID).to_pylist()) - {s.as_py() for s in seen})
    return user, unseen[0]


def _closing_summary(work, run, evaluation, report, user, item, started) -> str:
    """The two tables that matter, where the report is, and the commands to try next."""
    ranking = storage.read_json(evaluation)
    forecast = storage.read_json(run_layout.interests_file(run))
    lines = ["", "=" * 78, f"Demo done in {time.perf_counter() - started:.0f} s.", ""]
    lines.append(f"Next-item ranking ({ranking['users']} users, {ranking['protocol']}):")
    lines.append(f"  {'':36}{'HR@10':>10}{'NDCG@10':>10}{'MRR@10':>10}")
    popularity = ranking["baseline_popularity"]
    for name, metrics in (("model", ranking), ("most popular items", popularity)):
        values = "".join(f"{metrics[m]:>10.4f}" for m in ("hr@10", "ndcg@10", "mrr@10"))
        lines.append(f"  {name:36}{values}")
    users = forecast["users"]["test"]
    lines += ["", f"Interest forecast of each user's next 10 events ({users} users):"]
    lines.append(f"  {'':36}{'JS (lower is better)':>22}{'top-group accuracy':>20}")
    for key, name in FORECAST_ROWS:
        scores = forecast["methods"][key]
        lines.append(f"  {name:36}{scores['js']:>22.4f}{scores['top_accuracy']:>20.3f}")
    shown = {path: _shown(path) for path in (run, report)}
    port = "localhost:8000"
    body = json.dumps({"user_id": user, "k": 5})
    posted = {"user_id": user, "item_id": item, "timestamp": int(time.time())}
    event = json.dumps({"events": [posted]})
    json_header = "-H 'content-type: application/json'"
    lines += [
        "",
        f"Report: {shown[report]}  (open it in a browser)",
        "",
        "Try next:",
        f"  ./dev run recsys-dist serve --run {shown[run]}     # the demo model on 127.0.0.1:8000",
        "  ./dev run serve run serve/local.yaml            # the same, from Ray Serve's own CLI",
        f"  curl -s {port}/v1/recommend {json_header} -d '{body}'",
        f"  curl -s {port}/v1/events {json_header} -d '{event}'",
        f"  curl -s {port}/v1/users/{user}/interests       # drift, change points, forecast",
        f"  xdg-open {shown[report]}                       # or open it in any browser",
        f"  ./dev run recsys-dist evaluate --run {shown[run]} --keep-seen",
    ]
    return "\n".join(lines)


def _shown(path: str) -> str:
    """A path as short as it can be shown: relative to the working directory when inside it."""
    if "://" in path:
        return path
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path


if __name__ == "__main__":
    sys.exit(main())
