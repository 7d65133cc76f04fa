"""Where the service keeps its state: the online store and the event log of one service
instance, under which names, in which places, with which settings.

The replicas and the runners (:mod:`recsys_dist.serving.app`) reach both through these
functions, so they always agree; a deploy (``replace=True``) replaces an actor built with
other settings, a replica refuses one (:mod:`recsys_dist.serving.detached`).
"""

from __future__ import annotations

import os

import ray

from recsys_dist import run_layout
from recsys_dist.config import ServeConfig
from recsys_dist.credentials import resolve_secret
from recsys_dist.serving.event_log import event_log_actor
from recsys_dist.serving.seeding import SeedSource
from recsys_dist.serving.store import ActorStore, UserStore

NODE_GROUP_LABEL = "ray.io/node-group"  # Ray's own node label for a node's group


def default_wal_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "recsys_dist", "wal")


def event_log_dir(settings: ServeConfig, run_dir: str) -> str:
    return settings.event_log_dir or run_layout.event_log_dir(run_dir)


def event_log_name(settings: ServeConfig) -> str:
    return f"{settings.instance}_event_log"


def store_name(settings: ServeConfig) -> str:
    return f"{settings.instance}_user_store"


def seed_source(settings: ServeConfig, run_dir: str) -> SeedSource:
    return SeedSource(
        run_layout.prepared_dir_of(run_dir),
        event_log_dir(settings, run_dir),
        event_log_name(settings),
    )


def make_store(
    settings: ServeConfig, source: SeedSource | None = None, replace: bool = False
) -> UserStore:
    """The configured store; the embedded one re-seeds itself from ``source`` after a restart
    (Redis keeps its own data). ``serve.redis_url`` is resolved here, at the moment of use,
    so a run's saved config and a Serve config hold only its reference (``env:NAME``)."""
    if settings.store == "redis":
        from recsys_dist.serving.redis_store import RedisStore

        url = resolve_secret(settings.redis_url, "serve.redis_url")
        return RedisStore(url, settings.max_history, prefix=settings.instance)
    return ActorStore(
        settings.max_history,
        store_name(settings),
        source,
        replace=replace,
        label_selector=node_group(settings),
    )


def start_event_log(
    settings: ServeConfig, run_dir: str, replace: bool = False
) -> ray.actor.ActorHandle:
    """The service's event-log actor (created by the first caller, shared by the rest)."""
    return event_log_actor(
        event_log_dir(settings, run_dir),
        settings.wal_dir or default_wal_dir(),
        settings.flush_rows,
        settings.flush_seconds,
        name=event_log_name(settings),
        publish_before_ack=settings.event_log_ack == "published",
        replace=replace,
        label_selector=node_group(settings),
    )


def node_group(settings: ServeConfig) -> dict[str, str] | None:
    """The label selector placing the service's actors on ``serve.state_node_group``."""
    group = settings.state_node_group
    return {NODE_GROUP_LABEL: group} if group else None
