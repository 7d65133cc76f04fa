"""``train_loop_per_worker``: what every Ray Train worker runs.

Short and explicit, like Ray's DeepSpeed example: build the model, wrap it in a DeepSpeed
engine, stream this worker's shard in step with the other ranks, validate with full ranking
after every epoch (or every ``train.eval_every``), report the same number of times on every
rank, checkpoint from rank 0, stop early on NDCG@10.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import resource
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import deepspeed
import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from recsys_dist import run_layout, schema, storage
from recsys_dist.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint, verify
from recsys_dist.config import Config, TrainConfig, config_from_dict
from recsys_dist.data.batching import training_inputs
from recsys_dist.data.catalogue import category_peers, read_categories
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.errors import UserInputError
from recsys_dist.evaluation.metrics import finalize_metrics
from recsys_dist.evaluation.ranking import evaluation_sums, model_scorer
from recsys_dist.evaluation.ratings import Errors, tally_rating_errors
from recsys_dist.model import Bert4Rec, Bert4RecConfig, sample_negatives
from recsys_dist.model.warm_start import warm_start
from recsys_dist.train import resume
from recsys_dist.train.batches import (
    CHECKSUM_MODULUS,
    ShardBatches,
    placeholder_batch,
    sequence_checksum,
)
from recsys_dist.train.deepspeed_config import build_deepspeed_config
from recsys_dist.train.schedule import (
    decay_to,
    in_cooldown,
    planned_epochs,
    plateau_cooldown_end,
)

logger = logging.getLogger(__name__)

SELECTION_METRIC = "valid_ndcg@10"
PACE_EPOCHS = 3  # a time budget's pace: the mean of the latest epochs (or eval_every of them)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a restart continues from it."""

    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    recent_epochs_s: list[float] = field(default_factory=list)  # a budget's pace, newest last
    planned_epochs: int = 0  # epochs the run ends at (train.epochs, or what fits a budget)
    decay_ends: int = 0  # the epoch a budget's cool-down decays to zero at (0: not cooling)
    train_s: float = 0.0  # time in training steps only (no validation, no start-up)
    sequences: int = 0  # training sequences seen by all ranks
    restarts: int = 0  # times Ray Train restarted the workers from a checkpoint
    best: float = -1.0
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, metrics: dict[str, Any]) -> bool:
        """Add a validation result; return whether it is the best so far."""
        self.history.append(metrics)
        improved = metrics[SELECTION_METRIC] > self.best
        self.best = max(self.best, metrics[SELECTION_METRIC])
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        return improved


@dataclass(frozen=True)
class EpochStats:
    """One epoch of training: the loss on this rank; what all ranks trained on, summed."""

    loss: float  # mean over this rank's real (not placeholder) steps
    sequences: int  # training sequences, all ranks: the split's row count if none was missed
    checksum: int  # ``sequence_checksum`` of those sequences, all ranks


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train on this worker's shard of ``train``; everything needed comes in ``loop_config``."""
    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.train.cpus_per_worker)))
    keep_large_blocks_on_heap()
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    model, left_out = _build_model(config, loop_config)
    model, progress, saved = _restore(model, rank, world)
    if not progress.step and config.train.init_from:  # a resumed run keeps its own weights
        _warm_start(model, config.train.init_from, loop_config, rank)
    if left_out is not None and config.model.text_id_dropout:  # cold items: their text alone
        model.drop_untrained_ids(left_out)
    engine = _deepspeed_engine(model, config, world, loop_config["steps_per_epoch"])
    if saved is not None:  # Adam's moments, master weights and the schedule, as they were
        resume.apply(engine, saved)
    elif progress.step:  # a checkpoint without them: the optimizer restarts
        engine.lr_scheduler.step(progress.step)
    cache, agree = config.train.cache_rows, partial(_all_ranks, device=device)
    train_batches = ShardBatches(
        ray.train.get_dataset_shard("train"),
        config.train.batch_size,
        cache,
        shuffle=True,
        agree=agree,
        group_by_length=config.train.group_by_length,
    )
    valid_batches = ShardBatches(
        ray.train.get_dataset_shard("valid"),
        config.eval.batch_size,
        cache,
        shuffle=False,
        agree=agree,
        group_by_length=config.train.group_by_length,
    )
    nodes = _worker_nodes()
    clock = time.monotonic() - progress.elapsed_s
    _fit_schedule(engine, config, progress, rank, device)  # a resumed run re-plans what is left
    while progress.epoch < progress.planned_epochs:
        epoch_start = time.monotonic()
        epoch = _train_epoch(engine, train_batches, config, progress, rank, device, left_out)
        progress.train_s += time.monotonic() - epoch_start
        progress.sequences += epoch.sequences
        progress.epoch += 1
        progress.recent_epochs_s = [
            *progress.recent_epochs_s[1 - _pace_window(config) :],
            time.monotonic() - clock - progress.elapsed_s,  # with the last validation's time
        ]
        progress.elapsed_s = time.monotonic() - clock
        release_freed_memory()
        _fit_schedule(engine, config, progress, rank, device)
        speed = epoch.sequences / max(1e-9, time.monotonic() - epoch_start)
        if rank == 0:  # every epoch with -v; by default only those that validate (below)
            logger.debug("epoch %d: loss %.4f, %.0f sequences/s", progress.epoch, epoch.loss, speed)
        over_budget = bool(config.train.time_budget_s) and (
            progress.elapsed_s > config.train.time_budget_s
        )
        # A decaying budget schedule ends with its plan (its last epoch anneals); a cut, or a
        # run whose plan has not begun to decay, stops here.
        out_of_time = _any_rank(over_budget and not progress.decay_ends, device)
        last = progress.epoch >= progress.planned_epochs or out_of_time
        if progress.epoch % config.train.eval_every and not last:
            continue
        metrics = _validate(engine.module, valid_batches, config, rank, world, device)
        metrics.update(
            epoch=progress.epoch,
            step=progress.step,
            train_loss=epoch.loss,
            train_sequences=epoch.sequences,  # with the checksum: every row once per epoch
            train_checksum=epoch.checksum,
            train_seq_per_s=round(progress.sequences / max(1e-9, progress.train_s), 1),
            elapsed_s=round(progress.elapsed_s, 2),
            train_s=round(progress.train_s, 2),  # training steps only: no validation, no start
            train_nodes=nodes,
            train_restarts=progress.restarts,
            planned_epochs=progress.planned_epochs,
            lr=engine.lr_scheduler.get_last_lr()[0],
            worker_peak_rss_mib=round(_max_over_ranks([_peak_resident_mib()], device)[0]),
        )
        progress.record(metrics)
        if rank == 0:
            logger.info(
                "epoch %d/%d: loss %.4f, valid NDCG@10 %.4f%s, %.0f sequences/s",
                *(progress.epoch, config.train.epochs, epoch.loss, metrics[SELECTION_METRIC]),
                f", RMSE {metrics['valid_rmse']:.4f}" if "valid_rmse" in metrics else "",
                speed,
            )
        _report(engine, metrics, progress, loop_config, rank, world, device)
        if progress.evals_without_improvement >= config.train.patience and not progress.decay_ends:
            if not config.train.anneal_on_plateau or last:
                break
            _anneal_from_plateau(engine, config, progress, rank)
        if out_of_time:
            break


def _anneal_from_plateau(engine, config: Config, progress: Progress, rank: int) -> None:
    """Validation has stopped improving at a high rate: decay it to zero over a cool-down,
    then end (``train.anneal_on_plateau``). Early stopping used to cut such a run where it
    stood, like a budget cut mid-schedule; the decay is where a schedule's last gain comes
    from (MovieLens-1M's valid NDCG@10: 0.188 -> 0.192 over its cool-down)."""
    end = min(
        config.train.epochs, plateau_cooldown_end(progress.epoch, config.train.budget_cooldown)
    )
    progress.decay_ends = progress.planned_epochs = end
    _decay_until(engine, progress, end)
    if rank == 0:
        logger.info("validation has plateaued: the learning rate now reaches 0 at epoch %d", end)


def _fit_schedule(engine, config: Config, progress: Progress, rank: int, device) -> None:
    """Plan the epochs (all of them, or what fits ``train.time_budget_s`` at the pace so far);
    in the plan's cool-down (``train.budget_cooldown``), end the learning-rate decay at its
    last step. Every rank plans from the same numbers (the slowest rank's clock), so the
    ranks' schedules stay identical."""
    train = config.train
    window = _pace_window(config)
    if not (train.time_budget_s and train.budget_schedule and progress.epoch > window):
        # DeepSpeed's schedule, as configured, or a plateau's cool-down
        progress.planned_epochs = min(train.epochs, progress.decay_ends or train.epochs)
        return
    paced = progress.recent_epochs_s[-window:]  # past the slow first epoch
    elapsed, pace = _max_over_ranks([progress.elapsed_s, sum(paced) / len(paced)], device)
    planned = planned_epochs(train.time_budget_s, train.epochs, progress.epoch, elapsed, pace)
    if progress.decay_ends:  # once the rate decays, the run ends with it: never later ...
        planned = min(planned, progress.decay_ends)
        if progress.epoch < progress.decay_ends:  # ... nor before (a slower epoch must not
            planned = max(planned, progress.epoch + 1)  # cut the decay at half the rate)
    else:  # never end before the rate has had an epoch to decay in (at most one over budget)
        planned = max(planned, min(progress.epoch + 1, train.epochs))
    progress.planned_epochs = planned
    cooling = in_cooldown(progress.epoch, planned, train.budget_cooldown)
    if not cooling or progress.decay_ends == planned:
        return  # the configured schedule runs on until the cool-down
    progress.decay_ends = planned
    _decay_until(engine, progress, planned)
    if rank == 0:
        logger.info("time budget: the learning rate now reaches 0 at epoch %d", planned)


def _decay_until(engine, progress: Progress, end_epoch: int) -> None:
    """Decay the rate to zero at the end of ``end_epoch``, at the steps per epoch so far."""
    steps_left = round((end_epoch - progress.epoch) * progress.step / progress.epoch)
    # The scheduler's own step count: its rate is zero after the plan's last optimizer step.
    decay_to(engine.lr_scheduler, engine.lr_scheduler.last_batch_iteration + steps_left)


def release_freed_memory() -> bool:
    """Hand the heap memory torch has freed back to the OS (glibc's ``malloc_trim``).

    A batch's tensors differ in size from step to step (labelled positions vary), so the
    blocks :func:`keep_large_blocks_on_heap` keeps on the heap fragment it, and glibc never
    shrinks a heap whose top is in use: a MovieLens-1M run's workers grew from 2.7 to 10 GB
    in 25 epochs and were killed for memory. Trimming once an epoch keeps them flat at no
    measurable cost. Returns whether it could trim (not on other C libraries).
    """
    glibc = _glibc()
    if glibc is None:
        return False
    glibc.malloc_trim(0)
    return True


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (<malloc.h>)
LARGEST_HEAP_BLOCK = 2**30  # bytes: larger blocks are still their own mappings


def keep_large_blocks_on_heap() -> bool:
    """Serve blocks up to 1 GiB from glibc's heap rather than from fresh mappings.

    Every step allocates and frees the same large tensors (the [positions x items] logits of
    a MovieLens-1M batch are 350 MB). Above glibc's mmap threshold, which adapts only up to
    32 MB, each is a new mapping whose every page the kernel faults in and zeroes again, step
    after step: a third of the workers' CPU time went to the kernel. From the heap the pages
    stay mapped and are reused (the top of the heap too: glibc would otherwise give a freed
    block there back at once), and :func:`release_freed_memory` still hands the free ones
    back every epoch. Returns whether it could (not on other C libraries).
    """
    glibc = _glibc()
    return glibc is not None and all(
        glibc.mallopt(parameter, LARGEST_HEAP_BLOCK) == 1
        for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
    )


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if all(hasattr(libc, name) for name in ("malloc_trim", "mallopt")) else None


def _peak_resident_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pace_window(config: Config) -> int:
    """Epochs a budget's pace is averaged over: a whole validation cycle at least."""
    return max(PACE_EPOCHS, config.train.eval_every)


def _build_model(config: Config, loop_config: dict) -> tuple[Bert4Rec, torch.Tensor | None]:
    """The run's model; with ``model.item_text``, its text matrix filled in, and the items the
    softmax leaves out (``[V]`` bool: no training event shows them), both computed once by
    the driver (``loop_config["item_text"]``, an object-store reference)."""
    text = loop_config.get("item_text")
    text = None if text is None else ray.get(text)
    model_config = Bert4RecConfig.from_model_config(
        config.model,
        loop_config["vocab_size"],
        config.data.max_len,
        loop_config.get("ratings"),
        item_text_dim=0 if text is None else text["matrix"].shape[1],
    )
    model = Bert4Rec(model_config)
    if text is None:
        return model, None
    model.set_item_text(torch.tensor(text["matrix"]))  # a copy: the object store's is read-only
    return model, torch.from_numpy(~text["trained"])


def _restore(
    model: Bert4Rec, rank: int, world: int
) -> tuple[Bert4Rec, Progress, resume.ResumeState | None]:
    """Continue from the latest checkpoint when Ray Train restarts or resumes the run: its
    weights, progress, and this rank's optimizer state (applied once the engine exists)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return model, Progress(), None
    with checkpoint.as_directory() as directory:
        verify(directory, directory)  # checkpoints live where an export does: same check
        restored = Bert4Rec.load(directory)
        state = storage.read_json(f"{directory}/{STATE_FILE}")
        saved = resume.read(directory, rank, world)
    model.load_state_dict(restored.state_dict())
    progress = Progress(**state["progress"])
    progress.restarts += 1
    if rank == 0:
        logger.info("resuming from epoch %d (restart %d)", progress.epoch, progress.restarts)
    return model, progress, saved


def _warm_start(model: Bert4Rec, init_from: str, loop_config: dict, rank: int) -> None:
    """Start from a trained export: its weights, item rows matched by item id, new items
    from their catalogue peers (every rank does the same, deterministically)."""
    parent = load_checkpoint(init_from)
    vocab = Vocabulary.load(loop_config["vocab_path"])
    parent_rows = vocab.rows_in(parent.vocab)
    categories = read_categories(loop_config.get("items_dir"))
    peers = category_peers(vocab, parent_rows, categories) if categories else None
    try:
        done = warm_start(model, parent.model, parent_rows, peers)
    except UserInputError as error:  # not retried: the trainer fails the run with it
        raise UserInputError(f"train.init_from {init_from}: {error}") from None
    if rank == 0:
        logger.info(
            "warm start from %s: %d items copied, %d new from category peers, %d from the mean",
            init_from,
            done.copied,
            done.from_peers,
            done.from_mean,
        )


def _deepspeed_engine(model, config: Config, world: int, steps_per_epoch: int):
    ds_config = build_deepspeed_config(
        config.train, world, steps_per_epoch * config.train.epochs, bf16=config.train.use_gpu
    )
    printed = io.StringIO()  # DeepSpeed prints build notices to stdout: keep them for -v
    with contextlib.redirect_stdout(printed):
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=_parameter_groups(model, config.train.weight_decay),
            config=ds_config,
            dist_init_required=False,
        )
    for line in printed.getvalue().splitlines():
        logger.debug("deepspeed: %s", line)
    return engine


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases (the age bias table too) and LayerNorm, as in BERT."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_bias = param.ndim < 2 or "LayerNorm" in name or name.startswith("age_bias")
        (no_decay if is_bias else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _train_epoch(
    engine, batches: ShardBatches, config, progress: Progress, rank: int, device, left_out=None
) -> EpochStats:
    """One pass over this worker's shard, in step with the other ranks.

    Shards differ in length (no row is dropped to equalise them), but DeepSpeed's gradient
    all-reduce needs every rank at every step. So each step the ranks agree whether any still
    has a batch; one that has run out steps on a placeholder with zero loss weight (zero
    gradients, same collectives) until none has.
    """
    engine.train()
    seed = config.train.seed * 1_000_003 + progress.epoch * 1_009 + rank
    rng = np.random.default_rng(seed)  # masks and negatives
    torch.manual_seed(seed)  # dropout: an epoch after a restart draws what it drew before
    batches_left = batches.epoch(seed)
    drop = denoise_share(config.train, progress.epoch)
    step = partial(_train_step, left_out=None if left_out is None else left_out.to(device))
    total_loss, steps, sequences, checksum = 0.0, 0, 0, 0
    while True:
        batch = next(batches_left, None)
        if not _any_rank(batch is not None, device):
            break
        if batch is None:
            step(engine, placeholder_batch(), config, rng, device, 0.0, drop)
        else:
            total_loss += step(engine, batch, config, rng, device, 1.0, drop)
            steps += 1
            sequences += len(batch[schema.ITEMS])
            checksum = (checksum + sequence_checksum(batch)) % CHECKSUM_MODULUS
        progress.step += 1
    sequences, checksum = _sum_coverage(sequences, checksum, device)
    return EpochStats(total_loss / max(1, steps), sequences, checksum)


def denoise_share(train: TrainConfig, epoch: int) -> float:
    """The share of each batch's hardest positions left out in ``epoch`` (0-based): none at
    first, while the model learns what is clean, then growing to ``train.denoise_drop``."""
    return train.denoise_drop * min(1.0, epoch / train.denoise_warmup_epochs)


def _train_step(
    engine,
    batch: dict,
    config: Config,
    rng,
    device,
    weight: float,
    drop: float = 0.0,
    left_out=None,
) -> float:
    """Forward, backward and optimizer step on one batch; returns its (unweighted) loss.
    ``left_out``: ``[V]`` bool, items the softmax leaves out (``Bert4Rec.forward``)."""
    inputs = training_inputs(
        batch,
        config.data.max_len,
        config.model.num_time_buckets,
        config.model.objective,
        rng,
        config.train.mask_prob,
        config.train.last_item_mask_prob,
        event_ages=config.model.use_event_ages,
        rating_scale=engine.module.config.rating_scale(),
    )
    negatives, ages = None, inputs.age_buckets
    if config.train.loss == "sampled":  # uniform negatives, shared by the batch's positions
        vocab_size = engine.module.config.vocab_size
        negatives = sample_negatives(rng, vocab_size, config.train.negatives).to(device)
    output = engine(
        torch.as_tensor(inputs.items, device=device),
        torch.as_tensor(inputs.time_buckets, device=device),
        torch.as_tensor(inputs.labels, device=device),
        max_logits=config.train.max_logits,
        negatives=negatives,
        age_buckets=None if ages is None else torch.as_tensor(ages, device=device),
        rating_buckets=_tensor(inputs.rating_buckets, device),
        rating_labels=_tensor(inputs.rating_labels, device),
        drop_hardest=drop,
        left_out=left_out,
    )
    loss = output.loss
    if output.rating_loss is not None:
        loss = loss + config.train.rating_weight * output.rating_loss
    engine.backward(loss * weight)
    engine.step()
    return float(loss.detach())


def _tensor(values: np.ndarray | None, device) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, device=device)


def _sum_coverage(sequences: int, checksum: int, device) -> tuple[int, int]:
    """Sum row counts and checksums over ranks, exactly.

    A checksum (< 2**61) travels as two 31-bit halves, so the int64 sums cannot overflow.
    """
    low = (1 << 31) - 1
    values = torch.tensor([sequences, checksum >> 31, checksum & low], dtype=torch.int64)
    values = values.to(device)
    if dist.is_initialized():
        dist.all_reduce(values)
    total, high, rest = (int(v) for v in values.tolist())
    return total, ((high << 31) + rest) % CHECKSUM_MODULUS


def _validate(model, batches: ShardBatches, config, rank: int, world: int, device) -> dict:
    """Full-ranking validation; each rank scores the users hashed to it, sums are all-reduced.

    Hashing users (not counting batches) keeps the partition exact whatever order Ray Data
    delivers the rows in on each rank. With a rating head the same pass over the rows also
    sums its errors: RMSE/MAE at the epoch ranking selects.
    """
    mine = (_rows_of_rank(batch, rank, world) for batch in batches.epoch(seed=0))
    errors = Errors()
    if model.config.rating_head:
        mine = tally_rating_errors(model, mine, errors, device)
    sums = evaluation_sums(
        model_scorer(model, device),
        mine,
        config.eval,
        config.data.max_len,
        config.model.num_time_buckets,
        device,
        event_ages=config.model.use_event_ages,
        rating_scale=model.config.rating_scale(),
    )
    model.train()
    names = sorted({"count", *(f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in config.eval.ks)})
    rating_sums = [errors.squared, errors.absolute, errors.count]
    totals = torch.tensor(
        [*(sums.get(n, 0.0) for n in names), *rating_sums], dtype=torch.float64, device=device
    )
    if dist.is_initialized():
        dist.all_reduce(totals)
    *ranking, squared, absolute, count = totals.tolist()
    final = finalize_metrics(dict(zip(names, ranking, strict=True)))
    if count:
        final.update(Errors(squared, absolute, int(count)).summary())
    return {f"valid_{name}": value for name, value in final.items()}


def _rows_of_rank(batch: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    owner = np.array([zlib.crc32(str(u).encode()) % world for u in batch[schema.USER_ID]])
    return {name: column[owner == rank] for name, column in batch.items()}


def _worker_nodes() -> int:
    """Machines the workers run on, recorded with the metrics so placement can be checked."""
    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return 1
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _any_rank(flag: bool, device) -> bool:
    """True on every rank if it is true on any: ranks must agree on when to stop."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _max_over_ranks(values: list[float], device) -> list[float]:
    """Each value's maximum over all ranks (float64, so seconds stay exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def _all_ranks(flag: bool, device) -> bool:
    """True on every rank if it is true on all."""
    return not _any_rank(not flag, device)


def write_metrics(run_dir: str, history: list[dict[str, Any]]) -> None:
    """``RUN/metrics.jsonl``, one line per validation so far: rewritten whole, as object
    storage cannot append."""
    lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in history)
    fs, inner = storage.resolve(run_layout.metrics_file(run_dir))
    with fs.open_output_stream(inner) as out:
        out.write(lines.encode())


def checkpoint_state(progress: Progress, config: dict, data_hash: str) -> dict[str, Any]:
    """A checkpoint's ``state.json``: where training stands, its latest validation, and what
    it trained (a resume restores ``progress``; an export names its data by the hash)."""
    return {
        "progress": asdict(progress),
        "metrics": progress.history[-1],
        "config": config,
        "data_hash": data_hash,
    }


def _report(engine, metrics: dict, progress: Progress, loop_config: dict, rank, world, device):
    """Every rank reports; rank 0 attaches the checkpoint (every rank's optimizer state
    gathered into it) and rewrites metrics.jsonl."""
    optimizer_state = resume.gather(engine, rank, world, device)
    if rank != 0:
        ray.train.report(metrics)
        return
    logger.debug("epoch %d: %s", progress.epoch, json.dumps(metrics, sort_keys=True))
    write_metrics(loop_config["run_dir"], progress.history)
    state = checkpoint_state(progress, loop_config["config"], loop_config["data_hash"])
    with tempfile.TemporaryDirectory() as directory:
        optimizer_state.save(directory)  # first: save_checkpoint's sha256.json covers it
        save_checkpoint(directory, engine.module, loop_config["vocab_path"], state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
