"""Preparation at scale: throughput and peak memory of the whole Ray cluster, beside pandas.

For each log size (default 10M, 20M and 40M generated events) this script

1. generates the log once (cached under ``--work``; ~100 events per user, 1M events a file);
2. runs ``prepare`` in a fresh process that starts its own local Ray on every CPU;
3. runs the plain pandas baseline (read everything, ``drop_duplicates``, ``sort_values``,
   ``groupby(user).agg(list)``) in another fresh process;

while a thread here samples the memory in use on the machine (``MemTotal - MemAvailable``, which
includes Ray's shared-memory object store and every Ray process) every 50 ms. A run's memory is
its peak minus the idle level measured just before it. A run that leaves less than
``--reserve-gib`` available is stopped and reported as out of memory, as the kernel would have.

    python bench/prepare_scale.py                       # 10M, 20M, 40M
    python bench/prepare_scale.py --events 1e6 2e6 --json

Targets (issue 3): memory at 40M within 1.5x of memory at 10M; >= 1M events/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EVENTS_PER_USER = (20, 180)
USERS_PER_FILE = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=float, nargs="+", default=[10e6, 20e6, 40e6])
    parser.add_argument("--work", default="/tmp/recsys-prepare-scale")
    parser.add_argument("--reserve-gib", type=float, default=1.5)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    results = []
    for size in (int(n) for n in args.events):
        raw = _generate(Path(args.work), size)
        modes = ["ray"] if args.skip_pandas else ["ray", "pandas"]
        for mode in modes:
            out = Path(args.work, f"prepared-{size}")
            result = _measure(mode, raw, out, args.reserve_gib)
            result.update(requested_events=size)
            results.append(result)
            print(json.dumps(result) if args.json else _line(result), flush=True)
    if not args.json:
        print(_summary(results))
    return 0


def _generate(work: Path, size: int) -> Path:
    raw = work / f"raw-{size}"
    if (raw / "events").exists():
        return raw
    code = (
        "import ray, sys; from recsys_dist.data.synthetic import generate_dataset;"
        f"ray.init(include_dashboard=False);"
        f"generate_dataset({str(raw)!r}, users={size // 100}, items=100_000, categories=50,"
        f" events_per_user={EVENTS_PER_USER}, users_per_shard={USERS_PER_FILE})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return raw


def _measure(mode: str, raw: Path, out: Path, reserve_gib: float) -> dict:
    """Run one child process; sample machine memory until it exits."""
    idle = _in_use()
    peak, stop = [idle], threading.Event()
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"}
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(raw), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    out_of_memory = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _in_use())
            if psutil.virtual_memory().available < reserve_gib * 2**30:
                out_of_memory.set()
                _kill_tree(child.pid)
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = child.communicate()
    stop.set()
    sampler.join()
    result = {"mode": mode, "peak_memory_gib": round((peak[0] - idle) / 2**30, 3)}
    if out_of_memory.is_set():
        return {**result, "out_of_memory": True}
    if child.returncode:
        return {**result, "failed": child.returncode}
    return {**result, **json.loads(stdout.decode().strip().splitlines()[-1])}


def _in_use() -> int:
    memory = psutil.virtual_memory()
    return memory.total - memory.available


def _kill_tree(pid: int) -> None:
    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        process.kill()


def _child(mode: str, raw: str, out: str) -> dict:
    """The measured work, in its own process (and, for Ray, its own cluster)."""
    cpus = os.cpu_count() or 1
    if mode == "pandas":
        return _pandas_baseline(raw, cpus)
    import ray

    from recsys_dist.config import DataConfig
    from recsys_dist.data.prepare import prepare_dataset

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    manifest = prepare_dataset(raw, out, DataConfig())
    seconds = time.perf_counter() - started
    events = manifest["counts"]["events_accepted"]
    return {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "events_per_s_per_core": round(events / seconds / cpus),
        "cpus": cpus,
        "users": manifest["counts"]["users"],
        "buckets": manifest["num_buckets"],
        "train_rows": manifest["counts"]["train_rows"],
    }


def _pandas_baseline(raw: str, cpus: int) -> dict:
    """What a user would write first: one DataFrame, sort, group into per-user lists."""
    import pandas as pd

    started = time.perf_counter()
    columns = ["user_id", "item_id", "timestamp", "event_type"]
    frame = pd.read_parquet(Path(raw, "events"), columns=columns)
    frame = frame.drop_duplicates(columns)
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    users = frame.groupby("user_id", sort=False).agg({"item_id": list, "timestamp": list})
    seconds = time.perf_counter() - started
    return {
        "events": len(frame),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(frame) / seconds),
        "events_per_s_per_core": round(len(frame) / seconds / cpus),
        "cpus": cpus,
        "users": len(users),
    }


def _line(result: dict) -> str:
    if result.get("out_of_memory"):
        return f"{result['mode']:>6} {result['requested_events']:>11,} events: out of memory"
    return (
        f"{result['mode']:>6} {result.get('events', 0):>11,} events: {result['seconds']:>7.1f} s, "
        f"{result['events_per_s_per_core']:>10,} events/s/core, "
        f"peak memory {result['peak_memory_gib']:.2f} GiB"
    )


def _summary(results: list[dict]) -> str:
    """Markdown rows for docs/benchmarks.md."""
    memory = psutil.virtual_memory().total / 2**30
    machine = f"{os.cpu_count()} vCPU {platform.machine()}, {memory:.0f} GiB"
    rows = []
    for r in results:
        if r.get("out_of_memory"):
            rows.append(
                f"| {date.today()} | {machine} | {r['mode']} | {r['requested_events']:,} "
                f"| out of memory | | | {r['peak_memory_gib']} |"
            )
            continue
        rows.append(
            f"| {date.today()} | {machine} | {r['mode']} | {r['events']:,} | {r['seconds']} | "
            f"{r['events_per_s']:,} | {r['events_per_s_per_core']:,} | {r['peak_memory_gib']} |"
        )
    ray_runs = [r for r in results if r["mode"] == "ray" and "events" in r]
    if len(ray_runs) >= 2:
        ratio = ray_runs[-1]["peak_memory_gib"] / max(1e-9, ray_runs[0]["peak_memory_gib"])
        rows.append(f"\nRay memory at the largest size / smallest size: {ratio:.2f}x")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
