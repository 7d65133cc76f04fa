"""The service's named, detached actors (the user store, the event log): one per service
instance, created by the first caller, shared by every replica, and never reused with other
settings than the deployment's.

Ray's ``get_if_exists`` hands back an existing actor as it is: a redeploy with a new
``wal_dir`` or ``event_log_ack`` would silently keep writing where, and acknowledging when,
the old deployment said. Here an actor states what it was built with (``settings()``); a
deploy (``replace=True``) retires an actor built otherwise — it finishes its work, e.g. the
event log publishes every acknowledged event — and starts one with the new settings, with a
warning that names what changed; a replica (``replace=False``) refuses to start against one,
with the same message, rather than serve with settings nobody asked for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

logger = logging.getLogger(__name__)

NAMESPACE = "recsys_dist"  # every actor of every service instance (their names differ)
RETIRE_TIMEOUT_S = 300.0  # a retiring event log publishes what it holds: S3 may be slow
GONE_TIMEOUT_S = 60.0  # until Ray has released a killed actor's name


class SettingsMismatch(RuntimeError):
    """An actor of this name runs with other settings than the caller's."""


def detached_actor(
    cls: type,
    name: str,
    settings: dict[str, Any],
    *,
    replace: bool,
    extra: dict[str, Any] | None = None,
    **options: Any,
) -> ray.actor.ActorHandle:
    """The actor ``name`` of class ``cls`` built with ``settings`` (compared with an existing
    one's) and ``extra`` (not compared: e.g. where a restarted store seeds from).

    Raises:
        SettingsMismatch: With ``replace`` false, when one runs with other settings.
    """
    existing = _existing(name)
    if existing is not None:
        have = ray.get(existing.settings.remote())
        if have == settings:
            return existing
        changed = ", ".join(
            f"{key}: {have.get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if have.get(key) != value
        )
        if not replace:
            raise SettingsMismatch(
                f"{name} runs with other settings ({changed}); redeploy the application "
                "to replace it, or give this service its own serve.instance"
            )
        logger.warning("replacing %s, built with other settings (%s)", name, changed)
        ray.get(existing.retire.remote(), timeout=RETIRE_TIMEOUT_S)
        ray.kill(existing, no_restart=True)
        _wait_until_gone(name, have)
    return (
        ray.remote(cls)
        .options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, **options)
        .remote(**settings, **(extra or {}))
    )


def _existing(name: str) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _wait_until_gone(name: str, old: dict[str, Any]) -> None:
    """Ray releases a killed actor's name asynchronously; until then ``get_if_exists`` would
    hand back the dying actor. Done when no actor holds the name, or one built with other
    settings than ``old`` does (another caller started the new one first)."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (found := _existing(name)) is not None:
        try:
            if ray.get(found.settings.remote(), timeout=GONE_TIMEOUT_S) != old:
                return
        except ray.exceptions.RayActorError:
            pass  # the killed one, still holding its name
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was killed but holds its name after {GONE_TIMEOUT_S} s")
        time.sleep(0.1)  # polling Ray's actor table for a state change, bounded above
