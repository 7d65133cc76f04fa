"""Large catalogues: speed and peak memory of the full softmax (whole, chunked) and a sampled one.

For each catalogue size (default 100k and 1M items) this script trains the default-width model
(``ModelConfig``: hidden 64, 2 layers; ``data.max_len`` 50) for a few AdamW steps on batches of
random left-padded sequences (lengths uniform in 3..max_len, items uniform), labelled as the
objective labels them (``--objective``, default ``model.objective``: cloze masks 40 % of the
positions, causal labels every one), once with each loss:

* ``full``: the exact softmax, unchunked (``train.max_logits=0``). Skipped, with a note, where
  its working set (the [positions x items] logits, their log-softmax and their gradient, 4
  bytes each) would exceed ``--memory-cap-gib``;
* ``full-chunked``: the exact softmax in checkpointed row chunks (``train.max_logits``, 2**26);
* ``sampled``: ``train.loss=sampled`` with ``train.negatives`` (1024) uniform negatives per
  batch, log-Q corrected (``recsys_dist.model.losses``).

Each configuration runs in a fresh process, so peaks never mix (``--in-process``, for tests,
measures in this one). Memory is the peak resident
set (``ru_maxrss``) on CPU, which includes the ~0.4 GiB of torch and transformers themselves
(``baseline_memory_mib``: the peak right after the imports), or ``max_memory_allocated`` on
CUDA. Speed is the steady sequences/s over ``--steps`` steps after one warm-up step. Pure
torch: no Ray, no DeepSpeed (whose bf16 weights would halve the model's share on GPU; use
``--bf16`` for autocast). Prints one JSON line per configuration, then Markdown rows for
``docs/benchmarks.md`` (only the JSON lines with ``--json``)::

    python bench/large_catalogue.py --items 100000 1000000 --steps 5 --batch-size 128
    python bench/large_catalogue.py --items 1000000 --device cuda --bf16 --json

Run it on an otherwise idle machine: it measures time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_dist.config import OBJECTIVES, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from recsys_dist.data.masking import (  # noqa: E402
    IGNORE_INDEX,
    mask_for_training,
    shift_for_next_item,
)
from recsys_dist.schema import NUM_SPECIAL_TOKENS, PAD_INDEX  # noqa: E402

MODES = ("full", "full-chunked", "sampled")
WARMUP_STEPS = 1  # not timed: allocator and kernel warm-up
LOSS_COPIES = 3  # [N, V] float32 tensors the unchunked loss holds: logits, log-softmax, grad


def main(argv: list[str] | None = None) -> int:
    train = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up")
    parser.add_argument("--batch-size", type=int, default=train.batch_size)
    parser.add_argument("--max-len", type=int, default=DataConfig().max_len)
    parser.add_argument("--max-logits", type=int, default=train.max_logits)
    parser.add_argument("--negatives", type=int, default=train.negatives)
    parser.add_argument("--memory-cap-gib", type=float, default=8.0)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if present)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as on GPU training)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=ModelConfig().objective)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="only the JSON lines")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure here, not in fresh processes: quicker, but the memory peaks mix (tests)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0
    if min(args.items) < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--items, --steps and --batch-size must be positive")
    results = []
    for items in args.items:
        for mode in args.modes:
            spec = {**_spec(args), "items": items, "mode": mode}
            measure = _measure_here if args.in_process else _run_child
            result = _skipped(spec, args.memory_cap_gib) or measure(spec)
            results.append(result)
            print(json.dumps(result, sort_keys=True), flush=True)
    if not args.json:
        print(MARKDOWN_HEADER)
        print("\n".join(markdown_row(r) for r in results))
    return 1 if any("failed" in r for r in results) else 0


def _spec(args: argparse.Namespace) -> dict:
    names = ("steps", "batch_size", "max_len", "max_logits", "negatives", "device", "bf16")
    return {name: getattr(args, name) for name in (*names, "threads", "seed", "objective")}


def batches(spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(inputs, time buckets, labels)`` for every step: a pure function of ``spec``."""
    rng = np.random.default_rng(spec["seed"])
    train, model = TrainConfig(), ModelConfig()
    size, length = spec["batch_size"], spec["max_len"]
    out = []
    for _ in range(WARMUP_STEPS + spec["steps"]):
        items = rng.integers(NUM_SPECIAL_TOKENS, spec["items"] + NUM_SPECIAL_TOKENS, (size, length))
        shortest = min(DataConfig().min_user_events, length)  # what preparation keeps
        lengths = rng.integers(shortest, length + 1, size)  # [B]
        items[np.arange(length)[None, :] < (length - lengths)[:, None]] = PAD_INDEX  # left pad
        buckets = rng.integers(0, model.num_time_buckets, (size, length))
        if spec["objective"] == "causal":
            out.append(shift_for_next_item(items, buckets))
            continue
        inputs, labels = mask_for_training(items, rng, train.mask_prob, train.last_item_mask_prob)
        out.append((inputs, buckets, labels))
    return out


def _labelled_rows(spec: dict) -> list[int]:
    return [int((labels != IGNORE_INDEX).sum()) for _, _, labels in batches(spec)]


def _skipped(spec: dict, cap_gib: float) -> dict | None:
    """A result saying why the unchunked full softmax was not run, or None to run it."""
    if spec["mode"] != "full":
        return None
    vocab = spec["items"] + NUM_SPECIAL_TOKENS
    need_gib = LOSS_COPIES * 4 * max(_labelled_rows(spec)) * vocab / 2**30
    if need_gib <= cap_gib:
        return None
    note = f"skipped: the loss would hold {need_gib:.1f} GiB of logits > cap {cap_gib:g} GiB"
    return {**_describe(spec), "skipped": note}


def _describe(spec: dict) -> dict:
    return {
        "benchmark": "large_catalogue",
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        **{k: spec[k] for k in ("items", "mode", "objective", "batch_size", "max_len", "steps")},
        "bf16": spec["bf16"],
        "vocab_size": spec["items"] + NUM_SPECIAL_TOKENS,
        "max_logits": 0 if spec["mode"] == "full" else spec["max_logits"],
        "negatives": spec["negatives"] if spec["mode"] == "sampled" else None,
    }


def _run_child(spec: dict) -> dict:
    """Measure one configuration in a fresh interpreter; its last stdout line is the result."""
    lines, failed = run_child(__file__, spec)
    return {**_describe(spec), **({"failed": failed} if failed else lines[-1])}


def run_child(script: str, spec: dict) -> tuple[list[dict], str | None]:
    """Run ``script --child SPEC`` in a fresh interpreter (so memory peaks never mix): the
    JSON lines it printed, or why it failed. bench/catalogue_serving.py runs its children so too.
    """
    done = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return [], f"exit {done.returncode}: {reason}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")], None


def _measure_here(spec: dict) -> dict:
    """Measure in this process: its peak memory is the largest of every run so far."""
    return {**_describe(spec), **_child(spec), "in_process": True}


def _child(spec: dict) -> dict:
    """The measured work: build the model, step it, time it, read the peak memory."""
    import torch

    from recsys_dist.model import Bert4Rec, Bert4RecConfig, sample_negatives

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(_device(spec["device"], torch.cuda.is_available()))
    steps, baseline = batches(spec), peak_mib(device)
    vocab = spec["items"] + NUM_SPECIAL_TOKENS
    torch.manual_seed(spec["seed"])
    model_config = ModelConfig(objective=spec["objective"])
    config = Bert4RecConfig.from_model_config(model_config, vocab, spec["max_len"])
    model = Bert4Rec(config).to(device).train()
    train = TrainConfig()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    rng = np.random.default_rng(spec["seed"] + 1)
    max_logits = 0 if spec["mode"] == "full" else spec["max_logits"]
    seconds, losses = [], []
    for inputs, buckets, labels in steps:
        start = time.perf_counter()
        negatives = None
        if spec["mode"] == "sampled":
            negatives = sample_negatives(rng, vocab, spec["negatives"]).to(device)
        tensors = (torch.as_tensor(a, device=device) for a in (inputs, buckets, labels))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["bf16"]):
            loss = model(*tensors, max_logits=max_logits, negatives=negatives).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    timed = seconds[WARMUP_STEPS:]
    return {
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "labelled_rows": round(float(np.mean([(b[2] != IGNORE_INDEX).sum() for b in steps])), 1),
        "seq_per_s": round(spec["batch_size"] * len(timed) / sum(timed), 1),
        "step_s": round(sum(timed) / len(timed), 4),
        "peak_memory_mib": round(peak_mib(device), 1),
        "baseline_memory_mib": round(baseline, 1),
        "memory": "cuda_max_allocated" if device.type == "cuda" else "ru_maxrss",
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }


def _device(name: str, cuda: bool) -> str:
    return ("cuda" if cuda else "cpu") if name == "auto" else name


def peak_mib(device) -> float:
    """This process's peak memory so far: CUDA allocations, or the resident set."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


MARKDOWN_HEADER = (
    "| date | machine | device | items | loss | max logits | seq/s | step s | peak MiB | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(r: dict) -> str:
    """One row of the table under :data:`MARKDOWN_HEADER`."""
    note = r.get("skipped") or r.get("failed") or _note(r)
    loss = f"sampled, {r['negatives']} negatives" if r["mode"] == "sampled" else r["mode"]
    cells = [
        r["date"],
        r["machine"],
        r.get("gpu_name") or r.get("device", ""),
        f"{r['items']:,}",
        loss,
        f"{r['max_logits']:,}" if r["max_logits"] else "no limit",
        f"{r['seq_per_s']:,.1f}" if "seq_per_s" in r else "",
        f"{r['step_s']:.3f}" if "step_s" in r else "",
        f"{r['peak_memory_mib']:,.0f}" if "peak_memory_mib" in r else "",
        note,
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _note(r: dict) -> str:
    return (
        f"{r['memory']}, baseline {r['baseline_memory_mib']:,.0f} MiB; "
        f"{r['labelled_rows']:,.0f} labelled rows/batch; "
        f"loss {r['first_loss']} -> {r['last_loss']}"
    )


if __name__ == "__main__":
    sys.exit(main())
