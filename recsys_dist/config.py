"""One typed configuration for data, model, training and evaluation.

Frozen dataclasses loaded from YAML with ``section.key=value`` overrides. Unknown keys and
values of the wrong type raise at load time (nanoGPT's configurator does the same), so a typo
never silently falls back to a default; every number has a range declared beside its default
(:func:`bounded`). The resolved config is saved with every run, secrets redacted
(:meth:`Config.public_dict`); a secret setting is read at use (:mod:`recsys_dist.credentials`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys_dist import storage
from recsys_dist.bounds import bounded, ranges
from recsys_dist.credentials import SECRET_SETTINGS, redact
from recsys_dist.errors import UserInputError


class ConfigError(UserInputError):
    """A configuration key or value that cannot be accepted."""


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds all take it (the train loop scales it by 1e6)
MAX_TIME = 2**62 - 1  # Unix seconds: far past any real event, still exact in int64 arithmetic


def _check_ranges(section: Any) -> None:
    """Raise :class:`ConfigError` naming the first field of ``section`` outside its range
    (for a tuple, the first item outside it); every section's ``__post_init__`` starts here."""
    for name, allowed in ranges(type(section)).items():
        value = getattr(section, name)
        for item in value if isinstance(value, tuple) else (value,):
            if item not in allowed:
                key = f"{_section_name(type(section))}.{name}"
                raise ConfigError(f"{key} must be in {allowed}, got {item!r}")


def _section_name(cls: type) -> str:
    """A section class's key prefix: its field's name in :class:`Config`, the one home."""
    return next(name for name, hint in typing.get_type_hints(Config).items() if hint is cls)


# The closed sets of choice-valued settings (the CLI offers the same as its flags' choices).
SPLIT_METHODS = ("loo", "time")  # data.split
BAD_ROW_POLICIES = ("error", "skip")  # data.on_bad_rows
SAMPLINGS = ("uniform", "popularity")  # eval.sampling


@dataclass(frozen=True)
class DataConfig:
    """How raw events become training sequences (used by ``prepare``)."""

    max_len: int = bounded(50, 1, 100_000)  # model input length: the most recent events kept
    max_history: int = bounded(2000, 1, 1_000_000)  # events kept per user; caps bots, crawlers
    split: str = "loo"  # "loo": last events test, the ones before valid; "time": global time cut
    # loo: each user's last N events are the test future, N before them the valid one
    holdout_events: int = bounded(1, 1, 1000)
    # time split: share of events (by time) after the valid cut; after the test cut
    valid_fraction: float = bounded(0.1, 0, 1, low_open=True, high_open=True)
    test_fraction: float = bounded(0.1, 0, 1, low_open=True, high_open=True)
    min_user_events: int = bounded(3, 1, 1_000_000)  # users with fewer (de-duplicated) dropped
    dedup: bool = True  # drop exact duplicate events (same user, item, time, type)
    on_bad_rows: str = "error"  # "error": stop naming file/row/field; "skip": skip and count
    window_stride: int = bounded(10, 1, 100_000)  # training windows slide by this many events
    bucket_rows: int = bounded(2_000_000, 1, 10**10)  # events per hash bucket: bounds task memory

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("data.split", self.split, SPLIT_METHODS)
        _check_choice("data.on_bad_rows", self.on_bad_rows, BAD_ROW_POLICIES)
        if self.max_history < self.max_len:
            raise ConfigError(f"data.max_history={self.max_history} < data.max_len={self.max_len}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("data.valid_fraction + data.test_fraction must be < 1")


OBJECTIVES = ("cloze", "causal")  # BERT4Rec's masked items; SASRec's next item, full softmax
LOSSES = ("full", "sampled")  # exact softmax over every item; sampled softmax (huge catalogues)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the BERT4Rec encoder; copied, field by field, into the HF model config saved
    with the weights (``Bert4RecConfig.from_model_config``). The one place these defaults live:
    ``Bert4RecConfig`` takes its own from here."""

    hidden_size: int = bounded(64, 1, 65_536)  # width of item embeddings and the transformer
    num_layers: int = bounded(2, 1, 256)  # bidirectional transformer blocks
    num_heads: int = bounded(2, 1, 256)  # attention heads per block; must divide hidden_size
    intermediate_size: int = bounded(256, 1, 262_144)  # width of each feed-forward layer
    dropout: float = bounded(0.2, 0, 1, high_open=True)  # embeddings and each residual branch
    attention_dropout: float = bounded(0.1, 0, 1, high_open=True)  # attention probabilities
    use_time_gaps: bool = True  # add an embedding of the log-bucketed gap to the previous event
    # log2 buckets of the gap in seconds (bucket 0 = no previous event)
    num_time_buckets: int = bounded(32, 2, 1024)
    # Also bias attention by each earlier event's age at the query's time (a learned scalar per
    # log2 age bucket and head, as TiSASRec/HSTU's relative time bias). Off: see benchmarks.md.
    use_event_ages: bool = False
    # "causal": causal mask, predicts the next item at every position with a full softmax
    # (SASRec+CE); "cloze": bidirectional, predicts masked items (BERT4Rec). Saved with the
    # export. Causal won on MovieLens-1M and Amazon Beauty and tied on ml-100k (benchmarks.md).
    objective: str = "causal"
    # Each block's LayerNorm before its attention and feed-forward branches, with one after
    # the last block (pre-norm, as SASRec and GPT-2; HF's RoBERTa-PreLayerNorm encoder),
    # rather than after each residual sum (BERT's post-norm). Saved with the export.
    pre_norm: bool = False
    # Pass each position's state through BERT's MLM transform (dense -> GELU -> LayerNorm)
    # before it meets the tied item table. Off: the state itself is dotted with the table, as
    # in SASRec. Off won on Amazon Beauty by +0.007 test NDCG@10 (benchmarks.md,
    # "The output head"). Saved with the export.
    head_transform: bool = False
    # Where the data carries ratings: read each event's rating as an input and predict the
    # rating of the item a position predicts with a head on the same encoder (MSE, weighted by
    # train.rating_weight), beside the next item. Data without ratings builds no head.
    rating_head: bool = True
    # Ratings enter as buckets of the data's [min, max] scale: 9 hold 1-5 stars (whole or half)
    # exactly, so the head's recent-ratings prior is exact too.
    num_rating_buckets: int = bounded(9, 1, 1000)
    # Cold start from text: add to each item's ID embedding a learned projection of its
    # catalogue text ("title. categories") encoded by a pretrained sentence model, so items
    # with few or no training events still get a vector their text places. Needs a catalogue
    # and the `text` extra (pip install 'recsys-dist[text]'); data/item_text.py.
    item_text: bool = False
    # With item_text: each training step drops this share of the items' ID embeddings (input
    # and output alike), so the text projection learns to place an item on its own, as it
    # must for a cold one; items no training window holds then keep no ID vector at all
    # (DropoutNet, Volkovs et al. 2017). 0: off. See benchmarks.md, "Cold start from text".
    text_id_dropout: float = bounded(0.25, 0, 1, high_open=True)

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("model.objective", self.objective, OBJECTIVES)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, masking and the distributed set-up (used by ``train``)."""

    epochs: int = bounded(60, 1, 100_000)  # also sets the length of the learning-rate decay
    batch_size: int = bounded(128, 1, 1_000_000)  # sequences per worker per step
    lr: float = bounded(2e-3, 0, 1, low_open=True)
    weight_decay: float = bounded(0.01, 0, 1)
    warmup_steps: int = bounded(100, 0, 10_000_000)
    grad_clip: float = bounded(5.0, 0, 1_000_000, low_open=True)  # DeepSpeed: 0 would not clip
    # The loss computes at most this many logits (positions x items) at once: a large
    # catalogue's are computed in chunks, recomputed in the backward pass (0 = no limit).
    max_logits: int = bounded(2**26, 0, 2**40)
    # "full": the exact softmax over the whole catalogue; "sampled": each labelled position's
    # target against `negatives` items drawn uniformly per batch, logits corrected by log Q.
    loss: str = "full"
    negatives: int = bounded(1024, 1, 10_000_000)  # sampled loss: negatives per batch
    # Weight of the rating head's MSE beside the next-item loss (a model with model.rating_head
    # on data with ratings); 0 trains the head not at all. Adam scales each parameter's step
    # by its own gradients, so the head's own parameters learn at the same pace whatever the
    # weight: it sets only how far ratings shape the shared encoder and item table. At 1 they
    # overfit it (ml-100k valid RMSE 0.969 at epoch 6, 0.991 at 10); at 0.1 they do not, and
    # the ranking gains too (benchmarks.md "Ratings").
    rating_weight: float = bounded(0.1, 0, 1000)
    # Denoising (Truncated Cross-Entropy): leave the hardest share of each batch's positions out
    # of the next-item loss, growing linearly from 0 to this over denoise_warmup_epochs (noisy
    # logs: accidental clicks, bots). 0 = off. On ml-100k with 20 % popularity-drawn noise, 0.2
    # took back the whole 5-7 % loss; on clean logs it costs 3-7 % (docs/benchmarks.md "Noise").
    denoise_drop: float = bounded(0.0, 0, 1, high_open=True)
    denoise_warmup_epochs: int = bounded(5, 1, 100_000)
    mask_prob: float = bounded(0.4, 0, 1, high_open=True)  # cloze: share of positions masked
    last_item_mask_prob: float = bounded(0.1, 0, 1)  # cloze: share of rows masking just the last
    zero_stage: int = bounded(1, 0, 2)  # DeepSpeed ZeRO stage (0, 1 or 2)
    workers: int = bounded(2, 1, 10_000)
    use_gpu: bool = False  # one GPU per worker, NCCL and bf16
    # validate (full ranking) and checkpoint every N epochs, and after the last
    eval_every: int = bounded(1, 1, 100_000)
    # early stop after this many validations without NDCG@10 improving
    patience: int = bounded(10, 1, 100_000)
    # ... but first anneal: the rate decays to zero over a cool-down (budget_cooldown's share of
    # the epochs so far), then the run stops; a plateau at a high rate is not the model's best
    # (Amazon Beauty, docs/benchmarks.md "Padding"). false: stop at once, as it was.
    anneal_on_plateau: bool = True
    # stop training after this many seconds (0 = no limit; at most a year)
    time_budget_s: float = bounded(0.0, 0, 31_536_000)
    # With a budget, the learning-rate decay ends when the budget does (the epochs that fit at
    # the measured pace), so the run ends annealed; false cuts the epochs-long schedule short.
    budget_schedule: bool = True
    # ... decaying to zero over this last share of the planned epochs only; before it, the
    # configured schedule runs on (a short cool-down keeps the rate high for most of a budget).
    budget_cooldown: float = bounded(0.2, 0, 1, low_open=True)
    # Worker failures a run recovers from: Ray Train restarts the workers from the latest
    # checkpoint, with its optimizer state; one more fails the run (a rerun resumes it).
    max_failures: int = bounded(1, 0, 100)  # 0: the first worker failure fails the run
    cpus_per_worker: float = bounded(1.0, 0, 1024, low_open=True)  # also its torch threads
    placement_strategy: str = "PACK"  # Ray placement of workers: PACK, SPREAD, STRICT_SPREAD
    # a worker's shard up to this size is replayed from memory (0: never)
    cache_rows: int = bounded(1_000_000, 0, 10**10)
    # Batch training and validation rows of similar length together, each batch padded to its
    # longest row (train/batches.py): the same rows and steps an epoch, less padding to encode.
    group_by_length: bool = True
    # Training and validation rows arrive in file order, so one worker with one seed repeats
    # a run, its validation figures included, exactly; false lets Ray Data hand out blocks as
    # they finish (reads never wait on a slow block).
    preserve_order: bool = True
    seed: int = bounded(0, 0, MAX_SEED)
    # Start from this export's weights (a run's model/ or a registry version's), its item rows
    # copied by item id and new items started from their category peers (model/warm_start.py).
    # Ignored when the run resumes its own checkpoint. "" = a fresh initialisation.
    init_from: str = ""
    # Train only the users with an event after this time (epoch seconds), plus a replay_share
    # of the others, the same ones every epoch (data/prepared.py recent_users): a retraining
    # turn's fine-tuning sets it to the parent's data end. 0 = every user.
    active_since: int = bounded(0, 0, MAX_TIME)
    replay_share: float = bounded(1.0, 0, 1)

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("train.loss", self.loss, LOSSES)
        _check_choice(
            "train.placement_strategy",
            self.placement_strategy,
            ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        )


@dataclass(frozen=True)
class EvalConfig:
    """The ranking protocol (used by validation during training and by ``evaluate``)."""

    ks: tuple[int, ...] = bounded((5, 10, 20), 1, 100_000)
    exclude_seen: bool = True  # drop items already in the user's history from the ranking
    # 0 = full-catalogue ranking; N = rank against N sampled items
    sampled_negatives: int = bounded(0, 0, 10_000_000)
    sampling: str = "uniform"  # "uniform" or "popularity" (only with sampled_negatives > 0)
    batch_size: int = bounded(512, 1, 1_000_000)
    seed: int = bounded(0, 0, MAX_SEED)
    # Rank only the held-out events later than this (Unix seconds); 0 = every row. The
    # retraining gate sets it to the parent version's last event: the newest window.
    targets_after: int = bounded(0, 0, MAX_TIME)

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("eval.sampling", self.sampling, SAMPLINGS)
        if not self.ks:
            raise ConfigError("eval.ks must name at least one k")


@dataclass(frozen=True)
class ServeConfig:
    """The online service (used by ``serve``). Replicas, autoscaling and queue bounds are Ray
    Serve's own deployment options, set in ``serve/*.yaml``; the model comes in ``user_config``."""

    instance: str = "recsys_dist"  # names this service's store and event-log actors, Redis keys
    store: str = "embedded"  # "embedded": a Ray actor; "redis": a Redis server at redis_url
    # A secret (credentials.SECRET_SETTINGS): its password is written nowhere
    # (redis://:***@host:6379/0). Better give a reference, read at use: env:REDIS_URL (that
    # environment variable) or file:/run/secrets/redis_url (a mounted file's content).
    redis_url: str = "redis://127.0.0.1:6379/0"
    event_log_dir: str = ""  # acknowledged events (local or s3://); "" = event_log/ beside RUN
    wal_dir: str = ""  # the event log's local write-ahead log; "" = ~/.cache/recsys_dist/wal
    items_dir: str = ""  # item catalogue (DIR/items) for category filters; "" = the run's data
    # The Ray node group (node label ray.io/node-group: KubeRay sets it to the worker group's
    # name; `ray start --labels ray.io/node-group=NAME` on plain Ray) the store and event-log
    # actors run on; "" = wherever Ray puts them (a zero-CPU actor lands beside its creator,
    # often the head, whose loss is the cluster's).
    state_node_group: str = ""
    # serving a registry: check for a promotion this often
    registry_poll_s: float = bounded(2.0, 0, 3600, low_open=True)
    # ... and every replica switches to it at one instant, this long after the promotion (each
    # loads it first), so no client sees the new version and then the old one again.
    registry_switch_s: float = bounded(10.0, 0, 3600)
    flush_rows: int = bounded(10_000, 1, 10_000_000)  # events per Parquet micro-batch ...
    flush_seconds: float = bounded(5.0, 0, 3600, low_open=True)  # ... or sooner, this old
    # When POST /v1/events answers: "wal", once the events are fsynced in the write-ahead log
    # (serve.wal_dir: shared storage makes them survive the node); "published", once they
    # are in a Parquet file in serve.event_log_dir (e.g. s3://), whatever happens to the WAL.
    event_log_ack: str = "wal"
    max_history: int = bounded(2000, 1, 1_000_000)  # events kept per user online (most recent)
    max_k: int = bounded(1000, 1, 100_000)  # largest k a request may ask for
    # events in one request body (history or events): else 413
    max_request_events: int = bounded(2000, 1, 100_000)
    max_body_bytes: int = bounded(1_000_000, 1024, 2**30)  # request bodies above this get 413
    # API keys (recsys-dist keys create): "" = no authentication, for loopback only (serve
    # refuses another --host without keys unless --insecure). Reloaded this often.
    api_keys_file: str = ""
    api_keys_reload_s: float = bounded(5.0, 0.1, 3600)
    # per key and replica; 0 = no limit; over it: 429
    rate_limit_per_s: float = bounded(0.0, 0, 1_000_000)
    rate_limit_burst: float = bounded(20.0, 1, 1_000_000)
    # Event and query times outside this range (Unix seconds; default 1970 to 2200) get 422:
    # a time far in the future would sort after every real event for good.
    min_timestamp: int = bounded(0, 0, MAX_TIME)
    max_timestamp: int = bounded(7_258_118_400, 0, MAX_TIME)
    # Replica logs (Serve's access log and ours, with request ids): "TEXT" or "JSON" lines.
    # `recsys-dist serve` sets it; a Serve config sets the deployment's logging_config instead.
    log_encoding: str = "TEXT"
    batch_size: int = bounded(32, 1, 1024)  # requests scored together by @serve.batch
    batch_wait_s: float = bounded(0.005, 0, 1)  # how long a batch waits to fill

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("serve.store", self.store, ("embedded", "redis"))
        _check_choice("serve.log_encoding", self.log_encoding, ("TEXT", "JSON"))
        _check_choice("serve.event_log_ack", self.event_log_ack, ("wal", "published"))
        if not self.min_timestamp < self.max_timestamp:
            raise ConfigError(
                f"serve.min_timestamp={self.min_timestamp} must be below "
                f"serve.max_timestamp={self.max_timestamp}"
            )


@dataclass(frozen=True)
class InterestConfig:
    """Interest profiles, drift, change points and forecasts (``interests``, ``report`` and
    the service's ``/v1/users/{id}/interests``)."""

    window: str = "events"  # trajectory windows: "events", or calendar (UTC) "day"/"week"/"month"
    window_size: int = bounded(10, 1, 100_000)  # events, or calendar periods, per window
    clusters: int = bounded(20, 1, 100_000)  # embedding clusters for items without categories
    recent_windows: int = bounded(1, 1, 10_000)  # drift: the recent profile's last windows
    min_segment: int = bounded(5, 1, 100_000)  # change points: fewest events either side
    # change points: at most this chance to cut a steady user
    false_alarm_rate: float = bounded(0.1, 0, 1, low_open=True, high_open=True)
    max_change_points: int = bounded(3, 0, 1000)  # per user (0: none)
    future_events: int = bounded(10, 1, 100_000)  # evaluation: the held-out future window
    min_future_events: int = bounded(3, 1, 100_000)  # evaluation: users with fewer left out
    # forecast = blend*model + (1-blend)*decayed profile; -1: fit on validation data
    blend: float = bounded(-1.0, 0, 1, also=(-1,))
    # decayed profile's half-life in events; 0: fit on validation data
    half_life: float = bounded(0.0, 0, 1_000_000)
    batch_size: int = bounded(256, 1, 1_000_000)
    seed: int = bounded(0, 0, MAX_SEED)

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choice("interests.window", self.window, ("events", "day", "week", "month"))


@dataclass(frozen=True)
class RetrainConfig:
    """One turn of the retraining loop (``retrain``): new events -> candidate -> gate."""

    # The candidate is warm-started from the current version and trains this many epochs
    # (optimizer state and schedule start afresh, decaying over these epochs) ...
    epochs: int = bounded(10, 1, 100_000)
    # ... at the parent's train.lr times this, after this many warm-up steps: trained weights
    # need no warm-up, and a higher rate reaches the from-scratch model's quality sooner
    # (docs/benchmarks.md, "Retraining": 3x without warm-up got there in 4-7 epochs, a fifth
    # to a quarter of the scratch model's training time; 2x in 8-9 or not in 10, 1x not in 15).
    lr_scale: float = bounded(3.0, 0, 1000, low_open=True)
    warmup_steps: int = bounded(0, 0, 10_000_000)
    # ... on the users with events since the parent's data ended, plus this share of the
    # others (replayed, so the model does not forget them); 1 = every user, as from scratch.
    replay: float = bounded(1.0, 0, 1)
    # Promote unless the candidate's test metric is below the current version's by more
    # than this (both ranked on the same newest held-out events, same protocol).
    metric: str = "ndcg@10"
    tolerance: float = bounded(0.005, 0, 1)
    # ... and unless it fails to beat the most-popular list on those rows by this share: on
    # events whose order carries no signal (a corrupted or shuffled log) popularity is the
    # best any model can do, and the current version cannot tell, as its score falls too.
    min_lift: float = bounded(0.1, 0, 100)
    # Drift-triggered turns (retrain --when-drift SHARE): train only when at least this share
    # of the users active since the parent's data ended have drifted, i.e. their recent
    # interests (interests.recent_windows) are more than drift_threshold (JS divergence,
    # bits, 0-1) from their whole history's. 0: train on every turn with new events.
    when_drift: float = bounded(0.0, 0, 1)
    drift_threshold: float = bounded(0.2, 0, 1, low_open=True, high_open=True)

    def __post_init__(self) -> None:
        _check_ranges(self)
        measure, _, k = self.metric.partition("@")
        if measure not in ("hr", "ndcg", "mrr") or not k.isdigit():
            raise ConfigError(
                f"retrain.metric must look like ndcg@10, hr@20 or mrr@5; got {self.metric!r}"
            )


@dataclass(frozen=True)
class Config:
    """Everything a run needs, passed down as one object."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    interests: InterestConfig = field(default_factory=InterestConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as it is, secrets included: for this process and its workers only."""
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with each of :data:`SECRET_SETTINGS` redacted: the only form of the
        config written anywhere (``config.yaml``, hence registry versions and MLflow params;
        logs; ``config show``), so a password in a setting reaches no file."""
        values = self.to_dict()
        for key in SECRET_SETTINGS:
            section, name = key.split(".")
            values[section][name] = redact(values[section][name])
        return values

    def save(self, path: str | Path) -> None:
        """Write the resolved config, secrets redacted, as YAML (a local path or ``s3://``)."""
        storage.write_text(path, yaml.safe_dump(self.public_dict(), sort_keys=False))


PRESETS_DIR = Path(__file__).parent / "presets"  # settings per kind of data, by name


def presets() -> list[str]:
    """The names ``--config`` accepts besides a path (``recsys_dist/presets/NAME.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


# Users averaging at least this many events have "long histories": the long-histories preset
# (max_len 200) is MovieLens-1M's (165 a user); Beauty (9) keeps 50. ml-100k: benchmarks.md.
LONG_HISTORY_EVENTS = 100


def preset_for(events: int, users: int) -> str | None:
    """The preset for a dataset of ``events`` over ``users``, by its mean history length
    (None when there is nothing to judge).

    Why: the presets are settings per kind of data; ``prepare`` names the one that fits so a
    user need not know which settings suit their log (dropout for sparse logs, the sequence
    length for long ones, fixed when the data is prepared).
    """
    if users <= 0:
        return None
    return "long-histories" if events / users >= LONG_HISTORY_EVENTS else "short-histories"


def load_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    base: typing.Mapping[str, typing.Mapping[str, Any]] | None = None,
) -> Config:
    """Load ``path`` (YAML, or a preset's name, optional) and apply ``section.key=value``
    overrides on top.

    ``base`` (section -> key -> value) is laid down first: settings fixed elsewhere, such
    as a prepared dataset's ``data`` (its manifest's), so that the file and overrides on top
    are exactly what the caller gave, and a key they set can be told from one they left to
    the base (:func:`check_prepared_with` refuses one that disagrees with it).
    """
    raw: dict[str, Any] = {name: dict(values) for name, values in (base or {}).items()}
    if path is not None and str(path) in presets():
        path = PRESETS_DIR / f"{path}.yaml"
    if path is not None:
        loaded = yaml.safe_load(storage.read_text(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        for name, values in loaded.items():  # a section the file sets goes over the base's
            below = raw.get(name)
            laid = isinstance(values, dict) and isinstance(below, dict)
            raw[name] = {**below, **values} if laid else (below if values is None else values)
    for override in overrides:
        section, key, value = _parse_override(override)
        if raw.get(section) is None:  # absent, or an empty section in the file
            raw[section] = {}
        raw[section][key] = value
    return config_from_dict(raw)


def check_prepared_with(data: DataConfig, prepared: typing.Mapping[str, Any], where: str) -> None:
    """Refuse ``data`` settings that differ from those a dataset was prepared with.

    What ``prepare`` decided (window length, stride, split) shaped the data and is read back
    from its manifest (``prepared``: the manifest's ``config``) by every later stage; a
    second value typed for a later stage would disagree with the data (a model reading 50
    events of windows cut at 30, say). Settings the manifest predates are not checked.

    Args:
        data: The ``data`` section a command resolved.
        prepared: The dataset's settings (its manifest's ``config``).
        where: The dataset, named in the message.

    Raises:
        ConfigError: One line naming each setting that differs and both values.
    """
    changed = [
        (name, getattr(data, name), prepared[name])
        for name in (f.name for f in dataclasses.fields(DataConfig))
        if name in prepared and getattr(data, name) != prepared[name]
    ]
    if not changed:
        return
    (name, given, fixed), *more = changed
    text = f"data.{name}={_shown(given)} disagrees with the dataset's {_shown(fixed)}"
    text += "".join(f", data.{n}={_shown(g)} with its {_shown(f)}" for n, g, f in more)
    raise ConfigError(
        f"{text} (prepared into {where}): a data setting is fixed when the data is prepared; "
        "prepare again with it, or drop it from this command's --config and overrides"
    )


def _shown(value: Any) -> str:
    """A setting's value as an override spells it (``50``, ``loo``, ``true``)."""
    return json.dumps(value) if not isinstance(value, str) else value


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config`, raising :class:`ConfigError` on unknown keys or bad types."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
    hints = typing.get_type_hints(Config)
    return Config(**{name: _build_section(name, hints[name], raw.get(name) or {}) for name in raw})


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{name}' must be a mapping")
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(f'{name}.{k}' for k in unknown)}")
    return cls(**{k: _coerce(f"{name}.{k}", hints[k], v) for k, v in values.items()})


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against ``hint``; ints widen to float, lists become tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(key, item_type, v) for v in value)
    if hint is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``train.lr=3e-4`` -> ("train", "lr", 0.0003); the value is parsed as YAML."""
    dotted, sep, value = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return section, key, yaml.safe_load(value)


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; expected one of {list(choices)}")


def config_json(config: Config) -> str:
    """One line for logs: the resolved config, secrets redacted, logged once per run."""
    return json.dumps(config.public_dict(), sort_keys=True)
