"""The main job: generated drifting log → prepare → 2 DeepSpeed workers → evaluate → recommend.

Runs on the embedded default (local Ray, local files) in a few minutes on 2 cores::

    python jobs/end_to_end.py --workdir runs/demo

On a cluster, from a machine that can reach the head node (the work directory must be a
mount shared by every node)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/end_to_end.py --workdir /mnt/runs/demo --workers 4
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

from recsys_dist import cli, schema  # noqa: E402

DEMO_OVERRIDES = ["train.epochs=30", "train.eval_every=5", "train.patience=3"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value config overrides")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    raw, prepared, run = work / "raw", work / "prepared", work / "run"
    steps = [
        [
            "generate",
            "--output",
            str(raw),
            "--users",
            str(args.users),
            "--items",
            str(args.items),
            "--json",
        ],
        ["prepare", "--data", str(raw), "--output", str(prepared), "--json"],
        [
            "train",
            "--data",
            str(prepared),
            "--output",
            str(run),
            "--workers",
            str(args.workers),
            "--json",
            *DEMO_OVERRIDES,
            *args.overrides,
        ],
        ["evaluate", "--run", str(run), "--split", "test"],
    ]
    if raw.exists():
        steps[0].append("--overwrite")
    # One Ray for every step, with a CPU to spare for Ray Data while each worker holds one.
    cli.init_ray(None, min_cpus=args.workers + 2)
    for step in steps:
        print(f"\n$ recsys-dist {' '.join(step)}", flush=True)
        if cli.main(step) != 0:
            return 1
    return _sample_recommendations(raw, run, work)


def _sample_recommendations(raw: Path, run: Path, work: Path) -> int:
    """Recommend for three users from their full logs and print the top 5 of each."""
    first_part = sorted((raw / schema.EVENTS_DIR).glob("*.parquet"))[0]
    events = pq.read_table(first_part)
    users = events.column(schema.USER_ID).unique()[:3]
    histories = work / "histories.parquet"
    pq.write_table(events.filter(pc.is_in(events.column(schema.USER_ID), users)), histories)
    output = work / "recommendations.parquet"
    step = [
        "recommend",
        "--run",
        str(run),
        "--histories",
        str(histories),
        "--k",
        "5",
        "--output",
        str(output),
        "--json",
    ]
    print(f"\n$ recsys-dist {' '.join(step)}", flush=True)
    if cli.main(step) != 0:
        return 1
    for row in pq.read_table(output).to_pylist():
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
