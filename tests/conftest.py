"""Shared fixtures: one local Ray instance per test session, tiny data made on the fly, and a
real S3 endpoint over HTTP on loopback (moto's server mode) for the object-storage paths."""

from __future__ import annotations

import logging
import os
import socket
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
def ray_session(s3_endpoint):
    """A local Ray instance shared by every test that needs one.

    It starts after ``s3_endpoint`` so workers inherit the AWS environment (Ray workers see
    only the environment of the process that called ``ray.init``).
    """
    import ray

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
