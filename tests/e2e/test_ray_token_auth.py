"""Ray token authentication as the cluster configs set it (RAY_AUTH_MODE=token, the token in
RAY_AUTH_TOKEN): a real `ray start --head` on loopback (bench/cluster_loop.py's
``LocalCluster``, apart from the test session's own Ray), and Ray's own job CLI as the
retraining schedule runs it on plain Ray, with and without the token."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.bench.scripts import load_bench

pytestmark = pytest.mark.slow


def submit(url: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`ray job submit` as a user or the schedule runs it, waiting for the job to finish."""
    return subprocess.run(
        [*(load_bench("cluster_loop").RAY, "job", "submit", "--address", url), "--"]
        + ["python", "-c", "print('token-auth-ok')"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_job_api_refuses_a_submission_without_the_token_and_runs_it_with_the_token():
    """The head starts with token auth from RAY_AUTH_TOKEN. A client with no token (auth mode
    disabled, an empty HOME, so no token file either) and one with a wrong token are refused
    with 401/403 and nothing is submitted; the same command with the cluster's token is
    accepted and the job succeeds."""
    bench = load_bench("cluster_loop")
    cluster = bench.LocalCluster(Path(tempfile.mkdtemp(prefix="ta", dir="/tmp")))
    try:
        cluster.start_head(cpus=1)
        anonymous = {**cluster.env, "RAY_AUTH_MODE": "disabled"}
        anonymous.pop("RAY_AUTH_TOKEN")
        refused = submit(cluster.dashboard, anonymous, cluster.root)
        printed = refused.stdout + refused.stderr
        assert refused.returncode != 0, printed
        assert "Missing authentication token" in printed, printed[-3000:]  # the API's 401

        impostor = submit(
            cluster.dashboard,
            {**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            cluster.root,
        )
        printed = impostor.stdout + impostor.stderr
        assert impostor.returncode != 0, printed
        assert "Invalid authentication token" in printed, printed[-3000:]  # the API's 403
        assert cluster.api("GET", "/api/jobs/").json() == [], "a refused submission left a job"

        accepted = submit(cluster.dashboard, cluster.env, cluster.root)
        printed = accepted.stdout + accepted.stderr
        assert accepted.returncode == 0, printed[-3000:]
        assert "raysubmit_" in printed and "token-auth-ok" in printed, printed[-3000:]
        assert "succeeded" in printed, printed[-3000:]
    finally:
        cluster.stop()
