"""Shared fixtures: one local Ray instance per test session, tiny data made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# Keep Ray quiet and small on a 2-core machine; never let tests reach for a GPU.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
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
