"""The online store: every user's recent history, shared by all serving replicas.

A replica keeps no user state of its own, so any replica can answer any user and a replica that
crashes or is scaled away loses nothing. Two backends share one contract (tested alike):

* :class:`ActorStore`, the embedded default: a named, detached Ray actor holding histories in
  memory, seeded from a prepared dataset and the service's event log. It outlives every
  replica; if it dies (its node with it), Ray restarts it and it seeds itself again from the
  same sources (:mod:`recsys_dist.serving.seeding`), so users keep their histories.
* ``RedisStore`` (:mod:`recsys_dist.serving.redis_store`): histories in a Redis server,
  surviving restarts of the whole Ray cluster.

Histories hold raw item ids, so items the model does not know yet are kept for the next
retraining; they are ordered by time (ties keep arrival order) and cut to ``max_history``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray

from recsys_dist.serving.detached import detached_actor

if TYPE_CHECKING:  # seeding reads the dataset and the event log, which need this module
    from recsys_dist.serving.seeding import SeedSource

logger = logging.getLogger(__name__)

STORE_ACTOR = "recsys_dist_user_store"  # the embedded store's actor name


class StoreUnavailable(RuntimeError):
    """The online store could not be reached in time; the request may be retried.

    Raised by a backend whose server is unreachable or silent (a partition, a restart), so
    the service answers 503 instead of hanging or failing with a bug's 500. Whether a failed
    ``append`` was applied is unknown: it is never retried by the store (see
    :class:`~recsys_dist.serving.redis_store.RedisStore`), so the caller, who was not
    acknowledged, decides.
    """


@dataclass(frozen=True)
class Event:
    """One behaviour event as the service receives it."""

    user_id: str
    item_id: str
    timestamp: int  # seconds since the epoch
    event_type: str | None = None
    rating: float | None = None


@dataclass
class History:
    """A user's recent events, oldest first; ``ratings`` aligned with them (``None``: the
    event has none), or empty when no event was given one."""

    item_ids: list[str] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not any(r is not None for r in self.ratings):  # one spelling of "none rated"
            self.ratings = []

    def __len__(self) -> int:
        return len(self.item_ids)

    def rating_list(self) -> list[float | None]:
        """One rating (or ``None``) per event, whether or not any was given."""
        return self.ratings if len(self.ratings) == len(self.item_ids) else [None] * len(self)


class UserStore(abc.ABC):
    """What the service needs of an online store. All methods are coroutines: replicas serve
    many requests at once on one event loop."""

    max_history: int

    @abc.abstractmethod
    async def get_many(self, user_ids: Sequence[str]) -> list[History | None]:
        """Histories of ``user_ids`` in order; ``None`` for a user the store has never seen."""

    async def get(self, user_id: str) -> History | None:
        return (await self.get_many([user_id]))[0]

    @abc.abstractmethod
    async def append(self, events: Sequence[Event]) -> None:
        """Add events to their users' histories; visible to every replica when this returns."""

    @abc.abstractmethod
    async def seed(self, users: Iterable[tuple[str, History]]) -> int:
        """Replace the histories of these users (bulk load at start-up); returns users loaded."""

    @abc.abstractmethod
    async def num_users(self) -> int:
        """Users with a history."""

    async def close(self) -> None:  # noqa: B027 — optional: only some backends hold connections
        """Release connections (nothing to release for the embedded store)."""


def merge_events(history: History, events: Sequence[Event], max_history: int) -> History:
    """``history`` plus ``events``, ordered by time (ties: history first, then arrival order),
    cut to the most recent ``max_history``. The one ordering rule every backend applies."""
    events_of = list(zip(history.timestamps, history.item_ids, history.rating_list(), strict=True))
    events_of += [(e.timestamp, e.item_id, e.rating) for e in events]
    events_of.sort(key=lambda event: event[0])  # stable: equal times keep their order
    events_of = events_of[-max_history:]
    return History(
        [item for _, item, _ in events_of],
        [time for time, _, _ in events_of],
        [rating for _, _, rating in events_of],
    )


class _Histories:
    """The embedded store's actor: a dict of histories, in one process every replica reaches.

    Restarted by Ray after a crash, it seeds itself from ``source`` before answering (calls
    wait until ``__init__`` is done), so no user is a cold start meanwhile.
    """

    def __init__(self, max_history: int, source: SeedSource | None = None) -> None:
        self.max_history = max_history
        self.source = source
        self.histories: dict[str, History] = {}
        if source is not None and ray.get_runtime_context().was_current_actor_reconstructed:
            users = self.seed(list(source.histories()))  # the first seeding is the caller's
            for events in source.logged_events():
                self.append(events)
            logger.warning("user store restarted: re-seeded %d users", users)

    # Reads and seeding may run twice without harm: Ray retries them across a restart (they
    # wait for the re-seeded store). An append is not retried (it could apply twice).
    @ray.method(max_task_retries=-1)
    def get_many(self, user_ids: list[str]) -> list[History | None]:
        return [self.histories.get(user) for user in user_ids]

    def append(self, events: list[Event]) -> None:
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        for user, user_events in by_user.items():
            current = self.histories.get(user, History())
            self.histories[user] = merge_events(current, user_events, self.max_history)

    @ray.method(max_task_retries=-1)
    def seed(self, users: list[tuple[str, History]]) -> int:
        for user, history in users:  # in time order, like every stored history
            self.histories[user] = merge_events(history, (), self.max_history)
        return len(users)

    @ray.method(max_task_retries=-1)
    def num_users(self) -> int:
        return len(self.histories)

    def settings(self) -> dict:
        """What it was built with, compared at every deploy (:mod:`detached`)."""
        return {"max_history": self.max_history}

    def retire(self) -> None:
        """Nothing to hand over: a store built anew seeds itself from the same sources."""


class ActorStore(UserStore):
    """The embedded store: a client of one named, detached Ray actor per cluster namespace.

    Every replica that builds an ``ActorStore`` with the same ``name`` reaches the same actor;
    the first creates it. It uses no CPU reservation (it is mostly idle dictionary lookups).
    Ray restarts it without limit. Reads wait for the re-seeded store; an append in flight
    during a crash fails (the replica does not acknowledge, the client sends again) rather than
    being replayed into histories the re-seeding may already hold it in. One built with another
    ``max_history`` is replaced at a deploy (``replace``) and refused by a replica.
    """

    def __init__(
        self,
        max_history: int,
        name: str = STORE_ACTOR,
        source: SeedSource | None = None,
        replace: bool = False,
        label_selector: dict[str, str] | None = None,
    ) -> None:
        self.max_history = max_history
        self.actor = detached_actor(
            _Histories,
            name,
            {"max_history": max_history},
            replace=replace,
            extra={"source": source},
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            label_selector=label_selector,
        )

    async def get_many(self, user_ids: Sequence[str]) -> list[History | None]:
        return await self.actor.get_many.remote(list(user_ids))

    async def append(self, events: Sequence[Event]) -> None:
        await self.actor.append.remote(list(events))

    async def seed(self, users: Iterable[tuple[str, History]]) -> int:
        loaded, chunk = 0, []
        for user in users:
            chunk.append(user)
            if len(chunk) >= 10_000:  # bounded messages, however many users
                loaded += await self.actor.seed.remote(chunk)
                chunk = []
        if chunk:
            loaded += await self.actor.seed.remote(chunk)
        return loaded

    async def num_users(self) -> int:
        return await self.actor.num_users.remote()

    def destroy(self) -> None:
        """Remove the actor and its histories (tests, or a fresh start)."""
        ray.kill(self.actor)
