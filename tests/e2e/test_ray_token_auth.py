"""Ray token authentication as the cluster configs set it (RAY_AUTH_MODE=token, the token in
RAY_AUTH_TOKEN): a real `ray start --head` on loopback, and Ray's own job CLI as the retrain
CronJob runs it, with and without the token."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
# Everything that could hand a client a token or an address other than the ones a test gives.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(home: Path, **auth: str) -> dict[str, str]:
    """This process's environment with only the given auth settings. HOME is an empty folder:
    Ray falls back to ~/.ray/auth_token, which the test session's own local Ray writes."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    return {**env, "HOME": str(home), **auth}


def wait_for_job_api(head: subprocess.Popen, url: str, token: str, log: Path) -> None:
    """Poll the job API with the token until it answers 200; the head's exit fails at once."""
    deadline = time.monotonic() + 60
    request = urllib.request.Request(
        f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
    )
    while time.monotonic() < deadline:
        assert head.poll() is None, (
            f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}"
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)  # poll interval, not synchronisation: the loop ends on the answer
    pytest.fail(f"job API at {url} not up within 60 s:\n{log.read_text()[-3000:]}")


def submit(url: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`ray job submit` as a user or the CronJob runs it, waiting for the job to finish."""
    return subprocess.run(
        [RAY, "job", "submit", "--address", url, "--", "python", "-c", "print('token-auth-ok')"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_job_api_refuses_a_submission_without_the_token_and_runs_it_with_the_token(
    tmp_path_factory,
):
    """The head starts with token auth from RAY_AUTH_TOKEN. A client with no token (auth mode
    disabled, no token file) and one with a wrong token are refused with 401/403 and nothing
    is submitted; the same command with the cluster's token is accepted and the job succeeds.

    The head is its own cluster (own ports and temp dir), apart from the test session's Ray,
    and is stopped by killing its process group: `ray stop` would kill every Ray on the
    machine, the session's included.
    """
    root = tmp_path_factory.mktemp("rauth")  # short: Ray's socket paths live under it
    home, work = root / "home", root / "work"
    home.mkdir()
    work.mkdir()
    token = secrets.token_hex(32)
    port, dashboard = free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard}"
    server_env = environment(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = root / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                *(RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1"),
                f"--port={port}",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                "--num-cpus=1",
                "--num-gpus=0",
                f"--temp-dir={root / 'ray'}",
            ],
            env=server_env,
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ray's processes, and only them
        )
    try:
        wait_for_job_api(head, url, token, log)

        anonymous = submit(url, environment(home, RAY_AUTH_MODE="disabled"), work)
        printed = anonymous.stdout + anonymous.stderr
        assert anonymous.returncode != 0, printed
        assert "Missing authentication token" in printed, printed[-3000:]  # the API's 401

        wrong = environment(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        impostor = submit(url, wrong, work)
        printed = impostor.stdout + impostor.stderr
        assert impostor.returncode != 0, printed
        assert "Invalid authentication token" in printed, printed[-3000:]  # the API's 403

        listed = urllib.request.Request(
            f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(listed, timeout=10) as answer:
            assert answer.read().strip() == b"[]", "a refused submission left a job behind"

        client_env = environment(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        accepted = submit(url, client_env, work)
        printed = accepted.stdout + accepted.stderr
        assert accepted.returncode == 0, printed[-3000:]
        assert "raysubmit_" in printed and "token-auth-ok" in printed, printed[-3000:]
        assert "succeeded" in printed, printed[-3000:]
    finally:
        stop(head)


def stop(head: subprocess.Popen) -> None:
    """Kill the head's process group, and any of its descendants that left the group.

    SIGKILL, not SIGTERM: `ray start --block` takes about 30 s to shut down gracefully, and the
    throwaway cluster has nothing worth a graceful stop.
    """
    try:
        family = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    head.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"Ray processes outlived the test: {alive}"
