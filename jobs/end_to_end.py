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
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from recsys_dist import cli, schema, storage  # noqa: E402

DEMO_OVERRIDES = ["train.epochs=30", "train.eval_every=5", "train.patience=3"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value config overrides")
    args = parser.parse_args(argv)
    work = args.workdir
    raw, prepared, run = (storage.join(work, name) for name in ("raw", "prepared", "run"))
    steps = [
        [
            "generate",
            "--output",
            raw,
            "--users",
            str(args.users),
            "--items",
            str(args.items),
            "--drift-paths",  # interests shift along common paths the forecast can learn
            "0.8",
            "--json",
        ],
        # Each user's last 10 events are held out (the 10 before them for validation): the
        # ranking targets their first event, the interest forecast is scored on all ten.
        ["prepare", "--data", raw, "--output", prepared, "--holdout-events", "10", "--json"],
        [
            "train",
            "--data",
            prepared,
            "--output",
            run,
            "--workers",
            str(args.workers),
            "--json",
            *DEMO_OVERRIDES,
            *args.overrides,
        ],
        ["evaluate", "--run", run, "--split", "test"],
        ["interests", "--run", run, "--output", storage.join(work, "interests"), "--json"],
        ["report", "--run", run, "--output", storage.join(work, "report.html"), "--json"],
    ]
    if storage.exists(raw):  # a fresh demo: new data, and a new run rather than resuming the old
        steps[0].append("--overwrite")
        steps[2].append("--overwrite")
    # One Ray for every step, with a CPU to spare for Ray Data while each worker holds one.
    cli.init_ray(None, min_cpus=args.workers + 2)
    for step in steps:
        print(f"\n$ recsys-dist {' '.join(step)}", flush=True)
        if cli.main(step) != 0:
            return 1
    return _sample_recommendations(raw, run, work)


def _sample_recommendations(raw: str, run: str, work: str) -> int:
    """Recommend for three users from their full logs and print the top 5 of each."""
    first_part = storage.list_files(storage.join(raw, schema.EVENTS_DIR), ".parquet")[0]
    with storage.open_input(first_part) as source:
        events = pq.read_table(source)
    users = events.column(schema.USER_ID).unique()[:3]
    histories = storage.join(work, "histories.parquet")
    with storage.open_output(histories) as sink:
        pq.write_table(events.filter(pc.is_in(events.column(schema.USER_ID), users)), sink)
    output = storage.join(work, "recommendations.parquet")
    step = [
        "recommend",
        "--run",
        run,
        "--histories",
        histories,
        "--k",
        "5",
        "--output",
        output,
        "--json",
    ]
    print(f"\n$ recsys-dist {' '.join(step)}", flush=True)
    if cli.main(step) != 0:
        return 1
    with storage.open_input(output) as source:
        for row in pq.read_table(source).to_pylist():
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
