"""``serve``: online recommendations over HTTP (Ray Serve), real-time interest updates.

It runs until Ctrl-C or SIGTERM, which stop it (exit 0). With ``--json`` it prints one JSON
document, ``{"url": ..., "docs": ...}``, once the service answers, and nothing when it stops:
a script reads the first line and knows where to send requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from recsys_dist.cli import common
from recsys_dist.cli.command import Command


def _arguments(sub: argparse.ArgumentParser) -> None:
    common.add_model_source(sub, pick_version=False)  # --registry: follow its current version
    sub.add_argument("--port", type=int, default=8000, help="the HTTP port")
    sub.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    sub.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host beyond loopback without API keys (serve.api_keys_file)",
    )
    common.add_config_args(sub)


def _run(args: argparse.Namespace):
    common.check_run(args.run)
    if args.model is not None:
        common.model_dir(args)
    common.require(1 <= args.port <= 65535, f"--port must be in [1, 65535], got {args.port}")
    from recsys_dist.serving.app import run_service, use_haproxy_ingress

    config = common.config(args)
    common.require(
        _is_loopback(args.host) or config.serve.api_keys_file or args.insecure,
        f"--host {args.host}: the service would answer beyond this machine without "
        "authentication; create keys (recsys-dist keys create --file KEYS ...) and give "
        "serve.api_keys_file=KEYS, or pass --insecure",
    )
    use_haproxy_ingress()  # effective when init_ray starts a local Ray
    common.init_ray(args.address, min_cpus=2)
    url = run_service(
        *(args.run, config.serve, args.host, args.port, args.model),
        interests=config.interests,
        registry=args.registry,
    )
    started = {"url": url, "docs": f"{url}/docs"}
    if args.json:
        print(json.dumps(started, separators=(",", ":")))
    else:
        print(f"serving on {url} (API docs: {url}/docs); Ctrl-C stops it")
    sys.stdout.flush()
    _wait_for_interrupt()
    return {**started, "stopped": True}


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM; the service keeps running in Ray meanwhile."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


def _summary(r: dict, args: Any, seconds: float) -> list[str]:
    return [f"stopped serving {r['url']}"]


COMMANDS = (
    Command(
        "serve",
        "online recommendations over HTTP (Ray Serve), real-time interest updates",
        _run,
        _summary,
        _arguments,
        starts_ray=True,
        description=__doc__,
        json_when_done=False,  # its one document was printed when it started
    ),
)
