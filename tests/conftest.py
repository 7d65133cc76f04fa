"""Shared fixtures: one local Ray instance per test session, tiny data made on the fly, a real
S3 endpoint over HTTP on loopback (moto's server mode) for the object-storage paths, and a real
redis-server on loopback for the Redis store."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
S3_BUCKET = "recsys-test"
S3_SECRET = "moto-secret-never-logged-5f3c"  # tests assert this string never reaches output

# Keep Ray quiet and small on a 2-core machine; never let tests reach for a GPU.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server on 127.0.0.1 for the session; yields its ``redis://`` URL.

    Nothing is persisted (no RDB snapshots, no AOF) and its working directory is a temporary
    one, so a developer's own Redis and files are never touched. A missing server fails rather
    than skips: CI must exercise the Redis store, and ``./dev test`` installs one.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./dev test, which installs it")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    log = workdir / "redis.log"
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)]
    command += ["--save", "", "--appendonly", "no", "--logfile", str(log)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    try:
        while not _redis_answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                output = log.read_text() if log.exists() else ""
                pytest.fail(f"redis-server did not start (exit {server.poll()}):\n{output}")
            time.sleep(0.05)  # a poll interval, bounded by the deadline above
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _redis_answers(port: int) -> bool:
    """Whether a Redis server on ``port`` answers PING (plain RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
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
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = SHARED_DATASETS / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        pytest.skip(f"MovieLens-100K not found at {path}")
    return path
