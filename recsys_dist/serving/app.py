"""Running the service: the application Serve deploys, and ``recsys-dist serve``.

``serve deploy serve/recommender.yaml`` (or ``serve run serve/local.yaml``) calls
:func:`build_app` with the config's ``args``; ``recsys-dist serve`` calls :func:`run_service`.
Both fill an empty online store first and, at every deploy, replace a store or event log left
running with other settings (:mod:`recsys_dist.serving.detached`). The service itself is
:mod:`recsys_dist.serving.deployment`; its HTTP surface :mod:`recsys_dist.serving.api`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict, replace
from typing import Any

from ray import serve

from recsys_dist import run_layout, storage
from recsys_dist.config import ConfigError, InterestConfig, ServeConfig, config_from_dict
from recsys_dist.data.prepared import load_manifest
from recsys_dist.registry import Registry
from recsys_dist.serving.auth import KeysFile
from recsys_dist.serving.backends import make_store, seed_source, start_event_log
from recsys_dist.serving.deployment import RecommenderService
from recsys_dist.serving.seeding import SeedSource
from recsys_dist.serving.store import UserStore

logger = logging.getLogger(__name__)

# Ray Serve's high-throughput ingress: HAProxy (shipped with ``ray[serve]``) in front of
# replicas that answer HTTP themselves, instead of the Python proxy actor relaying each request
# over Ray calls. On 2 cores it halves the CPU per request (docs/benchmarks.md). Serve reads
# it when its processes start, so it belongs in the environment of ``ray start`` (the cluster
# configs set it) or of the process that starts a local Ray.
HAPROXY_INGRESS_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}


def use_haproxy_ingress() -> None:
    """Ask for HAProxy ingress in a Ray this process is about to start, unless the user chose
    otherwise (``RAY_SERVE_ENABLE_HA_PROXY=0`` keeps Serve's Python proxy)."""
    for name, value in HAPROXY_INGRESS_ENV.items():
        os.environ.setdefault(name, value)


def start_backends(settings: ServeConfig, run_dir: str) -> int:
    """What a deploy does before any replica starts; returns the users seeded.

    Refuses a missing or malformed keys file, and a run whose data is gone, with one line.
    Starts the event log, replacing one left running with other settings (it publishes
    every event it acknowledged first), so it also publishes what a previous deployment left
    in its WAL; then the store, likewise; then fills an empty store from the run's prepared
    dataset and the event log (the events posted since, :mod:`recsys_dist.serving.seeding`).
    A store that already holds users (a previous deployment's, or Redis's own persistence)
    is left alone, so a redeploy never overwrites events that arrived online.
    """
    if settings.api_keys_file:
        KeysFile(settings.api_keys_file).read()
    source = seed_source(settings, run_dir)
    load_manifest(source.prepared_dir)  # a clear error if the run's data is gone
    start_event_log(settings, run_dir, replace=True)
    return asyncio.run(_seed(make_store(settings, source, replace=True), source))


async def _seed(store: UserStore, source: SeedSource) -> int:
    try:
        if await store.num_users():
            return 0
        loaded = await store.seed(source.histories())
        events = 0
        for batch in source.logged_events():
            await store.append(batch)
            events += len(batch)
        logger.info(
            "seeded the online store with %d users from %s and %d logged events",
            *(loaded, source.prepared_dir, events),
        )
        return loaded
    finally:
        await store.close()


APP_NAME = "recsys_dist"


def run_service(
    run_dir: str,
    settings: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_dir: str | None = None,
    deployment: dict[str, Any] | None = None,
    interests: InterestConfig | None = None,
    registry: str | None = None,
    route_prefix: str = "/",
    name: str = APP_NAME,
) -> str:
    """Start the service on this Ray cluster (``recsys-dist serve``); returns its base URL.

    With ``registry``, ``run_dir`` is its current version's directory: the service serves
    that version and follows the registry's promotions by itself, and its event log defaults
    to ``event_log/`` beside the registry. ``deployment`` overrides the decorator's Serve
    options (e.g. ``num_replicas`` or an ``autoscaling_config``); ``serve deploy`` with
    ``serve/recommender.yaml`` sets them on a cluster. The application ``name`` answers under
    ``route_prefix``.
    """
    settings = following(settings, registry)
    start_backends(settings, run_dir)  # refuses bad settings before anything listens
    serve.start(http_options={"host": host, "port": port})
    model = {"model_dir": model_dir or run_layout.model_dir(run_dir)}
    if registry:
        model = {"registry": storage.absolute(registry)}
    logs = {"encoding": settings.log_encoding}
    options = {"user_config": model, "logging_config": logs, **(deployment or {})}
    interest_settings = asdict(interests or InterestConfig())
    app = RecommenderService.options(**options).bind(asdict(settings), run_dir, interest_settings)
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def following(settings: ServeConfig, registry: str | None) -> ServeConfig:
    """The settings of a service that serves ``registry``: its event log defaults to
    ``event_log/`` beside the registry, where the retraining of that registry reads."""
    if registry and not settings.event_log_dir:
        return replace(settings, event_log_dir=run_layout.event_log_dir(registry))
    return settings


def current_run(registry: str) -> str:
    """The directory of ``registry``'s current version (laid out as a run)."""
    current = Registry(registry).current()
    if current is None:
        raise ConfigError(f"registry {registry}: no current version to serve (models promote)")
    return current.path


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application builder ``serve deploy``/``serve run`` call with the config's ``args``:
    ``registry`` (serve its current version and follow its promotions, as the production
    topology does) or ``run`` (one run directory), and optional ``serve`` and ``interests``
    settings (fields of ``ServeConfig`` and ``InterestConfig``, checked like every config).
    An empty store is seeded from the run's prepared users first.

    Secure by default, as ``recsys-dist serve --host`` is: the builder cannot see where
    ``http_options`` binds, so it refuses to start without ``serve.api_keys_file`` unless the
    config says ``insecure: true`` (serve/local.yaml, bound to loopback, does)."""
    config = config_from_dict(
        {"serve": args.get("serve") or {}, "interests": args.get("interests") or {}}
    )
    if not config.serve.api_keys_file and args.get("insecure") is not True:
        raise ConfigError(
            "serve: no serve.api_keys_file, so anyone who reaches the service could post events "
            "and read histories; create keys (recsys-dist keys create --file KEYS ...) and set "
            "serve.api_keys_file: KEYS, or add `insecure: true` to the application's args for a "
            "service bound to loopback"
        )
    registry, run = args.get("registry"), args.get("run")
    if bool(registry) == bool(run):
        raise ConfigError("args: give `registry` (serve its current version) or `run`, one")
    settings = following(config.serve, registry)
    run_dir = current_run(registry) if registry else run
    start_backends(settings, run_dir)
    service = RecommenderService
    if registry:
        service = service.options(user_config={"registry": storage.absolute(registry)})
    return service.bind(asdict(settings), run_dir, asdict(config.interests))
