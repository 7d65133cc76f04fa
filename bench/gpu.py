"""GPU benchmark: ml-1m training on one GPU with bf16, then ``/v1/recommend`` scored on it.

One JSON object of figures, written to ``--out`` and printed as one line:

* training (Ray Train + DeepSpeed, ``train.workers=1``, ``train.use_gpu=true`` so bf16):
  sequences/s (the run's ``train_seq_per_s``: all training sequences over the time spent in
  training steps), peak device memory (``nvidia-smi``'s ``memory.used`` sampled while
  training runs, see :class:`GpuMemorySampler`), the time to a validation NDCG@10 of
  ``--target`` (the first ``RUN/metrics.jsonl`` line that reaches it; its ``elapsed_s`` is
  the training loop's clock, validation included, Ray Train's start-up not), and a model
  FLOPs utilisation estimate (:func:`train_flops_per_sequence`);
* serving: the real Ray Serve app on the trained run (one replica holding the GPU), on
  loopback, driven by ``--concurrency`` closed-loop HTTP clients for ``--serve-seconds``:
  requests/s and p50/p99 latency. The service is started and stopped by
  ``bench/serve_load.py``'s own functions.

The data is MovieLens-1M (``../shared/datasets/ml-1m/ml-1m.txt``, the SASRec text, or
``--data PATH``) when present, else a generated log of ml-1m's size; ``dataset_note`` says
which. Training length is bounded by ``train.time_budget_s`` (``--time-budget-s``), so the
whole script fits 8 minutes on one H200::

    bash bench/gpu.sh                                   # on the GPU machine: $OUT/gpu.json
    python bench/gpu.py --out gpu.json --time-budget-s 120 train.batch_size=512
    python bench/gpu.py --smoke --out /tmp/gpu.json     # the same code on CPU, tiny

``--smoke`` runs every step on CPU at a tiny size (a few hundred generated users, a 1-layer
16-wide model, 1 epoch, a couple of seconds of requests); the GPU-only figures are null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # serve_load, beside this file

import serve_load  # noqa: E402

from recsys_dist import cli, run_layout, schema  # noqa: E402
from recsys_dist.config import Config, load_config  # noqa: E402

ML1M_CANDIDATES = (  # ../shared beside the checkout; a copy inside it (the device machine's)
    REPO.parent / "shared" / "datasets" / "ml-1m" / "ml-1m.txt",
    REPO / "shared" / "datasets" / "ml-1m" / "ml-1m.txt",
)
GPU_OVERRIDES = [  # one GPU; the MovieLens-1M settings of docs/benchmarks.md
    *("train.workers=1", "train.use_gpu=true", "data.max_len=200", "data.window_stride=100"),
]
SMOKE_OVERRIDES = [
    "train.workers=1",
    "data.max_len=10",
    "model.hidden_size=16",
    "model.intermediate_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.epochs=1",
    "train.batch_size=32",
    "train.warmup_steps=5",
]
SYNTHETIC_GPU = {"items": 3416, "categories": 20, "events_per_user": (20, 300)}  # ~ml-1m
SYNTHETIC_SMOKE = {"users": 300, "items": 100, "categories": 4, "events_per_user": (20, 40)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    gpu = not args.smoke
    if gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on a machine without a GPU", file=sys.stderr)
        return 2
    overrides = [*(SMOKE_OVERRIDES if args.smoke else GPU_OVERRIDES)]
    overrides += [f"train.time_budget_s={args.time_budget_s}", *args.overrides]
    config = load_config(None, overrides)
    _ingress(args.ingress)
    cli.init_ray(None, min_cpus=config.train.workers + 2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gpu-"))
    result = _describe(args, config, gpu)
    result.update(_data(args, work))
    prepared, prepare_s, manifest = _prepare(work, config)
    result.update(prepare_s=prepare_s, vocab_size=manifest["vocab_size"])
    result.update(train_rows=manifest["counts"]["train_rows"])
    result.update(_train(prepared, work / "run", config, args, manifest["vocab_size"], gpu))
    result.update(_serve(work / "run", prepared, args, gpu))
    result["total_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu.json", help="write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny, on CPU (the tests' path)")
    parser.add_argument("--data", default=None, help="ml-1m.txt, or 'synthetic' (default: auto)")
    parser.add_argument("--synthetic-users", type=int, default=6040, help="generated log's users")
    parser.add_argument("--target", type=float, default=0.15, help="valid NDCG@10 to time")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device dense bf16")
    parser.add_argument("--time-budget-s", type=float, default=150.0, help="train.time_budget_s")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP clients in flight")
    parser.add_argument("--serve-seconds", type=float, default=15.0, help="measured load")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    parser.add_argument("--workdir", default=None, help="keep outputs here (default: temp)")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return parser


def _ingress(ingress: str) -> None:
    """HAProxy ingress, as ``recsys-dist serve`` ships it, or Serve's Python proxy; either
    takes effect only in a Ray this process starts."""
    from recsys_dist.serving.app import use_haproxy_ingress

    if ingress == "haproxy":
        use_haproxy_ingress()
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    else:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"


def _describe(args, config: Config, gpu: bool) -> dict:
    """The machine and the settings the figures were measured with."""
    return {
        "benchmark": "gpu",
        "date": date.today().isoformat(),
        "smoke": args.smoke,
        "device": "cuda" if gpu else "cpu",
        "gpu_name": _gpu_name() if gpu else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "overrides": args.overrides,
        "workers": config.train.workers,
        "bf16": config.train.use_gpu,  # the DeepSpeed config enables bf16 exactly on GPU
        "batch_size": config.train.batch_size,
        "max_len": config.data.max_len,
        "hidden_size": config.model.hidden_size,
        "num_layers": config.model.num_layers,
        "intermediate_size": config.model.intermediate_size,
        "objective": config.model.objective,
        "time_budget_s": config.train.time_budget_s,
    }


def _gpu_name() -> str | None:
    """From ``nvidia-smi``: asking torch would open a CUDA context in this process, and its
    memory would count in the training's peak."""
    rows = _nvidia_smi("name")
    return rows[0] if rows else None


# --- data ---------------------------------------------------------------------------------------


def _data(args, work: Path) -> dict:
    """Write the canonical log to ``work/raw``: ml-1m if found, else a generated one."""
    from recsys_dist.data.importers import import_dataset
    from recsys_dist.data.synthetic import generate_dataset

    raw = str(work / "raw")
    found = _ml1m(args.data) if not args.smoke else None
    if found is not None:
        import_dataset("sasrec", str(found), raw, overwrite=True)
        return {"dataset": "ml-1m", "dataset_path": str(found), "dataset_note": "MovieLens-1M"}
    sizes = SYNTHETIC_SMOKE if args.smoke else {"users": args.synthetic_users, **SYNTHETIC_GPU}
    generate_dataset(raw, seed=0, overwrite=True, **sizes)
    low, high = sizes["events_per_user"]
    log = f"a generated log ({sizes['users']} users, {sizes['items']} items, {low}-{high} events"
    if args.smoke:
        note = f"smoke: {log} each)"
    elif args.data == "synthetic":
        note = f"--data synthetic: {log} each)"
    else:
        looked = args.data or " or ".join(str(p) for p in ML1M_CANDIDATES)
        note = f"ml-1m not found at {looked}: {log} each) instead"
    _log(note)
    return {"dataset": "synthetic", "dataset_path": None, "dataset_note": note}


def _ml1m(data: str | None) -> Path | None:
    if data == "synthetic":
        return None
    candidates = [Path(data)] if data else ML1M_CANDIDATES
    return next((path for path in candidates if path.is_file()), None)


def _prepare(work: Path, config: Config) -> tuple[Path, float, dict]:
    from recsys_dist.data.prepare import prepare_dataset

    started = time.perf_counter()
    manifest = prepare_dataset(str(work / "raw"), str(work / "prepared"), config.data)
    seconds = round(time.perf_counter() - started, 1)
    _log(f"prepared {manifest['counts']['train_rows']} training rows in {seconds} s")
    return work / "prepared", seconds, manifest


# --- training -----------------------------------------------------------------------------------


class GpuMemorySampler:
    """The largest ``memory.used`` that ``nvidia-smi`` reports while the block runs, in MiB.

    The training worker is another process (a Ray Train actor), so its
    ``torch.cuda.max_memory_allocated`` is out of this process's reach; the device's own
    count is not. It is the whole device's: every process's CUDA context, DeepSpeed's buffers
    and the caching allocator's reserve included, so it is an upper bound on what training
    needs; ``baseline_mib`` is the count just before. Sampled every ``period_s`` seconds: a
    peak shorter than that can be missed. Both stay ``None`` without ``nvidia-smi``.
    """

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self.baseline_mib: int | None = None
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemorySampler:
        self.baseline_mib = self._used()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            used = self._used()
            if used is not None:
                self.peak_mib = max(used, self.peak_mib or 0)
            self._stop.wait(self.period_s)  # the sampling period

    @staticmethod
    def _used() -> int | None:
        rows = _nvidia_smi("memory.used", "nounits")
        return max(int(row) for row in rows) if rows else None


def _nvidia_smi(query: str, *extra: str) -> list[str] | None:
    """``nvidia-smi --query-gpu=QUERY`` lines (one per GPU), or None where it is missing."""
    if shutil.which("nvidia-smi") is None:
        return None
    options = ",".join(["noheader", *extra])
    command = ["nvidia-smi", f"--query-gpu={query}", f"--format=csv,{options}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] or None


def _train(prepared: Path, run_dir: Path, config: Config, args, vocab: int, gpu: bool) -> dict:
    """Train (``train.train``), sampling device memory; the figures of its metrics.jsonl."""
    from recsys_dist.train.trainer import train

    _log(f"training on {'1 GPU, bf16' if gpu else 'CPU'} for at most {args.time_budget_s} s")
    with GpuMemorySampler() as memory:
        summary = train(str(prepared), str(run_dir), config)
    history = run_layout.read_metrics(run_dir)
    seq_per_s = history[-1]["train_seq_per_s"]  # cumulative over the whole run
    seconds, epoch = time_to_target(history, args.target)
    flops = train_flops_per_sequence(config, vocab)
    achieved = flops * seq_per_s / 1e12
    _log(f"trained {summary.epochs} epochs: {seq_per_s} sequences/s, {achieved:.4f} TFLOP/s")
    return {
        "train_wall_s": summary.train_seconds,  # train(): Ray Train start-up and export too
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "best_valid_ndcg@10": round(summary.best_metrics["valid_ndcg@10"], 4),
        "train_seq_per_s": seq_per_s,
        "peak_gpu_memory_mib": memory.peak_mib if gpu else None,
        "gpu_memory_baseline_mib": memory.baseline_mib if gpu else None,
        "gpu_memory_method": "nvidia-smi memory.used, max over 0.25 s samples during train()",
        "target_ndcg@10": args.target,
        "time_to_target_s": seconds,
        "time_to_target_epoch": epoch,
        "flops_per_seq": flops,
        "achieved_tflops": round(achieved, 6),
        "peak_tflops": args.peak_tflops if gpu else None,
        "mfu": round(achieved / args.peak_tflops, 6) if gpu else None,
    }


def time_to_target(history: list[dict], target: float) -> tuple[float | None, int | None]:
    """``elapsed_s`` and epoch of the first validation with NDCG@10 >= ``target``, else
    ``(None, None)``. Resolution: one validation (``train.eval_every`` epochs)."""
    for row in history:
        if row["valid_ndcg@10"] >= target:
            return row["elapsed_s"], row["epoch"]
    return None, None


def train_flops_per_sequence(config: Config, vocab_size: int) -> float:
    """Analytic model FLOPs to train on one sequence (a multiply-add is 2 FLOPs).

    With L = ``data.max_len`` (L - 1 for the causal objective, which shifts by one),
    H = ``hidden_size``, F = ``intermediate_size``, N = ``num_layers``, V = ``vocab_size``::

        encoder = N * (8*L*H^2 + 4*L^2*H + 4*L*H*F)  # Q, K, V, O; Q.K^T and A.V; feed-forward
        head    = P * (2*H^2 + 2*H*V)                 # dense transform + tied decoder
        P       = (1 - q)*p*L + q                      # cloze: p = mask_prob,
                                                       #   q = last_item_mask_prob
                = L                                    # causal: every position predicts
        flops_per_seq = 3 * (encoder + head)           # backward ~ 2 x forward
        MFU = flops_per_seq * train_seq_per_s / (peak_tflops * 1e12)

    Every sequence is counted as a full window of L: batches are padded only to their longest
    row (``train.group_by_length``), so short sequences make this an over-estimate of both the
    encoder's and the head's work, and the MFU an upper bound. Embedding
    look-ups, LayerNorm, softmax and the loss's chunk recomputation are not counted (model
    FLOPs, not hardware FLOPs), nor is validation: sequences/s counts training steps only.
    """
    model, train = config.model, config.train
    causal = model.objective == "causal"
    length = config.data.max_len - 1 if causal else config.data.max_len
    h, f = model.hidden_size, model.intermediate_size
    encoder = model.num_layers * (8 * length * h * h + 4 * length**2 * h + 4 * length * h * f)
    q = train.last_item_mask_prob
    labelled = length if causal else (1 - q) * train.mask_prob * length + q
    head = labelled * (2 * h * h + 2 * h * vocab_size)
    return float(3 * (encoder + head))


# --- serving ------------------------------------------------------------------------------------


def _serve(run_dir: Path, prepared: Path, args, gpu: bool) -> dict:
    """The Serve app on the trained run (one replica, on the GPU when there is one), under a
    warm-up and then a measured closed-loop load of ``/v1/recommend``."""
    import pyarrow.parquet as pq

    users_dir = prepared / schema.USERS_DIR
    users = pq.read_table(users_dir, columns=[schema.USER_ID]).column(0).to_pylist()
    actor = {"num_cpus": 1, **({"num_gpus": 1} if gpu else {})}
    _log(f"serving on {'the GPU' if gpu else 'CPU'}: {args.concurrency} clients")
    url = serve_load._start(run_dir, {"num_replicas": 1, "ray_actor_options": actor})
    try:
        warm = min(3.0, args.serve_seconds)
        asyncio.run(closed_loop(url, users, args.concurrency, warm))
        load = asyncio.run(closed_loop(url, users, args.concurrency, args.serve_seconds))
    finally:
        serve_load._stop()
    _log(f"served {load['rps']} requests/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms")
    return {
        "serve_concurrency": args.concurrency,
        "serve_seconds": args.serve_seconds,
        "serve_replica_gpus": actor.get("num_gpus", 0),
        "serve_ingress": args.ingress,
        **{f"serve_{key}": value for key, value in load.items()},
    }


async def closed_loop(url: str, users: list[str], clients: int, seconds: float) -> dict:
    """``clients`` loops, each posting ``/v1/recommend`` for a random user as soon as its last
    answer came, for ``seconds``: the throughput at that concurrency, and its latencies.
    (``serve_load._load`` is open-loop at a set rate: it measures latency at a load, not the
    most a replica answers.)"""
    import httpx

    rng = np.random.default_rng(0)
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = time.perf_counter() + seconds

    async def one_client(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            body = {"user_id": users[rng.integers(len(users))], "k": 10}
            sent = time.perf_counter()
            response = await client.post(f"{url}/v1/recommend", json=body)
            latencies.append(time.perf_counter() - sent)
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    ok = sum(status == 200 for status in statuses)
    return {
        "requests": len(statuses),
        "ok": int(ok),
        "rps": round(ok / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def _log(message: str) -> None:
    print(f"[bench/gpu] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
