"""Shared fixtures: one local Ray instance per test session, tiny data made on the fly, a real
S3 endpoint over HTTP on loopback (moto's server mode) for the object-storage paths, and a real
redis-server on loopback for the Redis store."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys_dist import console

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
S3_BUCKET = "recsys-test"
S3_SECRET = "moto-secret-never-logged-5f3c"  # tests assert this string never reaches output

# Keep Ray quiet and small on a 2-core machine; never let tests reach for a GPU.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# The session's Ray (and the clusters and drivers tests start) get the settings a local
# `recsys-dist` Ray gets on this many CPUs (ray_session below), e.g. a small Parquet footer pool.
RAY_SESSION_CPUS = 4
console.local_ray_environment(RAY_SESSION_CPUS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the AWS environment pointing at it; yields the bucket.

    The environment is set in this process before Ray starts (``ray_session`` depends on this
    fixture), so every Ray worker and any subprocess a test starts inherit it. Shared AWS
    config files are pointed away so a developer's own profile can never be used.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "moto-access-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probes (slow timeouts)
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
    }
    saved = {name: os.environ.get(name) for name in (*env, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_prefix(s3_endpoint) -> str:
    """A fresh ``s3://recsys-test/<unique>`` prefix for one test."""
    return f"{s3_endpoint}/{uuid.uuid4().hex[:12]}"


class RedisServer:
    """A private redis-server on 127.0.0.1 that a test may stop and start again (same port).

    Nothing is persisted (no RDB snapshots, no AOF) and its working directory is a temporary
    one, so a developer's own Redis and files are never touched. A missing server fails rather
    than skips: CI must exercise the Redis store, and ``./dev test`` installs one.
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.password = password
        credentials = f":{password}@" if password else ""
        self.url = f"redis://{credentials}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and return once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run ./dev test, which installs it")
        log = self.workdir / "redis.log"
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--dir", str(self.workdir), "--save", "", "--appendonly", "no"]
        command += ["--logfile", str(log)]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while not _redis_answers(self.port, self.password):
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                output = log.read_text() if log.exists() else ""
                pytest.fail(f"redis-server did not start (exit {code}):\n{output}")
            time.sleep(0.05)  # a poll interval, bounded by the deadline above

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL after 10 s); its data goes with it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server (:class:`RedisServer`) for the session; yields its URL."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def secured_redis(tmp_path_factory):
    """A started redis-server of this test's own that requires a password: one that a test
    may plant in its settings, then look for in every file it made."""
    password = f"planted-redis-password-{uuid.uuid4().hex[:12]}"
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory):
    """A started redis-server of this test's own, which it may stop and start again."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _redis_answers(port: int, password: str | None = None) -> bool:
    """Whether a Redis server on ``port`` answers PING (plain RESP, no client library)."""
    hello = f"AUTH {password}\r\nPING\r\n" if password else "PING\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(hello.encode())
            answer = b""
            while b"PONG" not in answer and b"-" not in answer:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return b"+PONG" in answer
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """A local Ray instance shared by every test that needs one.

    It starts after ``s3_endpoint`` so workers inherit the AWS environment (Ray workers see
    only the environment of the process that called ``ray.init``).
    """
    import ray

    from recsys_dist.serving.app import use_haproxy_ingress

    use_haproxy_ingress()  # the serving tests run the ingress `recsys-dist serve` ships
    # A stopped replica stays reachable this long so load balancers can deregister it (30 s by
    # default); HAProxy here runs on the same node and learns it at once.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=RAY_SESSION_CPUS, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = SHARED_DATASETS / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        pytest.skip(f"MovieLens-100K not found at {path}")
    return path


# The one tiny model the full suite trains for its end-to-end tests (the CLI, the service,
# batch scoring, interests and the report share it): a generated log whose users prefer
# categories and drift between them, 2 Ray Train workers with DeepSpeed, 30 epochs.
SHARED_RUN_MODEL = (
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "model.dropout=0.1",
    "model.attention_dropout=0.1",
    "train.epochs=30",
    "train.eval_every=10",
    "train.batch_size=32",
    "train.lr=0.003",
    "train.warmup_steps=20",
)
SHARED_RUN_MAX_LEN = 20  # the service test posts 15 events: most of what the model reads


@dataclass(frozen=True)
class TrainedRun:
    """What the shared run's fixture made, and what each CLI step printed with ``--json``.

    Tests read it and may add files beside it (their own outputs), but never change ``raw``,
    ``prepared`` or ``run``: every end-to-end test of the session sees the same model.
    """

    root: Path
    raw: Path
    prepared: Path
    run: Path
    generated: dict
    manifest: dict
    summary: dict
    interests: dict  # `interests --output ROOT/interests --json`: evaluation and analysis
    model: tuple[str, ...] = SHARED_RUN_MODEL  # the train overrides it was trained with
    max_len: int = SHARED_RUN_MAX_LEN


@pytest.fixture
def cli_json():
    """``cli_json(*argv)``: the real CLI in this process with ``--json``; its last stdout line,
    parsed (it must exit 0)."""
    return lambda *argv: _cli_json(list(argv))


@pytest.fixture(scope="session")
def trained_run(ray_session, tmp_path_factory) -> TrainedRun:
    """generate → prepare → train (2 workers) → interests through the real CLI, once a session."""
    root = tmp_path_factory.mktemp("shared-run")
    raw, prepared, run = root / "raw", root / "prepared", root / "run"
    steps = {
        "generated": ["generate", "--output", str(raw), "--num-users", "400", "--num-items", "200"],
        "manifest": ["prepare", "--data", str(raw), "--output", str(prepared)],
        "summary": ["train", "--data", str(prepared), "--output", str(run), "--workers", "2"],
        "interests": ["interests", "--run", str(run), "--output", str(root / "interests")],
    }
    steps["generated"] += ["--num-categories", "4", "--seed", "3"]
    steps["manifest"] += ["--max-len", str(SHARED_RUN_MAX_LEN)]
    steps["summary"] += SHARED_RUN_MODEL
    printed = {name: _cli_json(argv) for name, argv in steps.items()}
    return TrainedRun(root=root, raw=raw, prepared=prepared, run=run, **printed)


def _cli_json(argv: list[str]) -> dict:
    """Streams are captured here, not with ``capsys``, which session fixtures cannot use."""
    import contextlib
    import io

    from recsys_dist import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*argv, "--json"])
    assert code == 0, f"{argv[0]} exited {code}: {err.getvalue()[-3000:]}"
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def train_checksum():
    """``prepared (local or s3://) -> int``: the ``sequence_checksum`` of every training window,
    cut straight from the stored users, to compare with what the workers reported training on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_dist import schema, storage
    from recsys_dist.data.prepared import load_manifest, split_spec
    from recsys_dist.data.sequences import training_rows
    from recsys_dist.train.batches import sequence_checksum

    def checksum(prepared: str) -> int:
        parts = []
        for path in storage.list_files(storage.join(prepared, schema.USERS_DIR), ".parquet"):
            with storage.open_input(path) as source:
                parts.append(pq.read_table(source))
        windows = training_rows(pa.concat_tables(parts), split_spec(load_manifest(prepared)))
        columns = (schema.USER_ID, schema.TIMESTAMPS)
        return sequence_checksum(
            {name: windows.column(name).to_numpy(zero_copy_only=False) for name in columns}
        )

    return checksum


# The tiny untrained export the fast tier's unit tests share (predictor, interests,
# evaluation, report): a model of this shape, never trained, in a run directory laid out as
# training lays it out. Leave-3-out gives every user a held-out future window of 3 events.
TINY_RUN_MODEL = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2}
TINY_RUN_DATA = {"max_len": 10, "holdout_events": 3}


@dataclass(frozen=True)
class TinyRun:
    """What ``tiny_run`` made. Read-only for every test: one that writes into a run (the
    interest evaluation, the report) works on a ``shutil.copytree`` of ``run``."""

    root: Path
    raw: Path
    prepared: Path
    run: Path
    config: object  # the recsys_dist.config.Config that config.yaml holds


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory) -> TinyRun:
    """generate → prepare → an untrained model exported into RUN/, in seconds, once a session.

    The run directory is written by the functions training uses (the run record, the
    config, ``save_checkpoint`` then ``export``); only metrics.jsonl is made up: two epochs
    of plausible numbers, with the keys the training loop writes.
    """
    from recsys_dist.config import Config, DataConfig, ModelConfig, TrainConfig
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny-run")
    raw, prepared, run = root / "raw", root / "prepared", root / "run"
    generate_dataset(str(raw), users=60, items=40, categories=4, seed=0)
    data = DataConfig(**TINY_RUN_DATA)
    prepare_dataset(str(raw), str(prepared), data)
    config = Config(
        data=data, model=ModelConfig(**TINY_RUN_MODEL), train=TrainConfig(epochs=2, workers=1)
    )
    _export_untrained(str(prepared), str(run), config)
    return TinyRun(root=root, raw=raw, prepared=prepared, run=run, config=config)


def _export_untrained(prepared: str, run: str, config) -> None:
    """What ``train`` leaves in ``run``, for a model seeded as the loop seeds it, untrained."""
    import tempfile

    import torch

    from recsys_dist import checkpoint, run_layout, schema, storage
    from recsys_dist.data.prepared import load_manifest, rating_scale
    from recsys_dist.model import Bert4Rec, Bert4RecConfig
    from recsys_dist.train.loop import Progress, checkpoint_state, write_metrics
    from recsys_dist.train.trainer import start_run

    start_run(prepared, run, config)
    manifest = load_manifest(prepared)
    with torch.random.fork_rng():  # deterministic weights; the session's RNG is left alone
        torch.manual_seed(config.train.seed)
        model_config = Bert4RecConfig.from_model_config(
            config.model, manifest["vocab_size"], config.data.max_len, rating_scale(manifest)
        )
        model = Bert4Rec(model_config)
    progress = Progress()
    for epoch, quality in ((1, 0.05), (2, 0.08)):
        metrics = {
            f"valid_{m}@{k}": quality * k / 20 for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)
        }
        metrics.update(valid_count=float(manifest["counts"]["valid_rows"]), epoch=epoch)
        metrics.update(step=epoch * 3, train_loss=4.0 - epoch * 0.2, train_sequences=90)
        metrics.update(train_checksum=epoch, train_seq_per_s=900.0, elapsed_s=epoch * 0.1)
        metrics.update(train_nodes=1)
        progress.epoch, progress.step = epoch, epoch * 3
        progress.record(metrics)
    write_metrics(run, progress.history)
    state = checkpoint_state(progress, config.to_dict(), manifest["data_hash"])
    with tempfile.TemporaryDirectory() as directory:
        vocab = storage.join(prepared, schema.VOCAB_FILE)
        checkpoint.save_checkpoint(directory, model.eval(), vocab, state)
        checkpoint.export(directory, run_layout.model_dir(run))
