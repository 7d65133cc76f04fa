"""The Serve deployment: one replica answers any user, scoring with the model it serves.

``POST /v1/events`` makes a user's new behaviour count at once: the events are first written to
the durable event log (so the next retraining sees them), then added to the shared online
store, and only then acknowledged; the user's next ``POST /v1/recommend`` scores the updated
history. No retraining is involved. Replicas hold no user state, so any replica answers any
user and autoscaling or a crashed replica loses nothing.

Scoring goes through the same :class:`Recommender` as batch scoring; concurrent requests are
scored together by ``@serve.batch``, on the GPU when the replica has one. The model comes
through ``user_config`` (``{"model_dir": ...}`` or ``{"registry": ...}``), so a new model is
picked up by updating the config, without a redeploy.

A dependency that does not answer makes the request fail fast with 503 (nothing
acknowledged), never hang, and ``/healthz`` says which one; Serve's own replica health check
looks at the replica alone, since restarting a replica cannot bring back a store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
import torch
from fastapi import FastAPI, HTTPException
from ray import serve

from recsys_dist import run_layout, schema
from recsys_dist.config import InterestConfig, ServeConfig
from recsys_dist.inference.explain import explain
from recsys_dist.registry import Registry
from recsys_dist.serving.api import build_api
from recsys_dist.serving.auth import KeyRing
from recsys_dist.serving.backends import make_store, seed_source, start_event_log
from recsys_dist.serving.metrics import ServiceMetrics
from recsys_dist.serving.schemas import (
    EventsRequest,
    EventsResponse,
    Health,
    HistoryEvent,
    HistoryResponse,
    InterestsResponse,
    Reason,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
)
from recsys_dist.serving.served import (
    RegistryFollower,
    ServedModel,
    analyse_history,
    load_categories,
)
from recsys_dist.serving.store import Event, History, StoreUnavailable, merge_events

logger = logging.getLogger(__name__)

# What /v1/model reports of the event log: its state, the node it runs on, its backlog and
# what it could not publish.
EVENT_LOG_FIELDS = (
    "state",
    "node_id",
    "pending",
    "files_written",
    "segments_quarantined",
    "torn_records",
    "publish_failures",
)
METRICS_POLL_S = 5.0  # how often a replica copies the event log's counters to its gauges
# How long a request waits on the online store or the event log before it is answered 503
# (nothing acknowledged: the client may send again). The store answers in about a
# millisecond; the log's append in a few (an fsync), or one object-store PUT when it
# publishes before acknowledging.
STORE_TIMEOUT_S = 5.0
EVENT_LOG_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 2.0  # a health check answers within about this, whatever is down
UNAVAILABLE = (StoreUnavailable, ray.exceptions.RayError, asyncio.TimeoutError)


@dataclass
class _Query:
    """One request's scoring work, queued for ``@serve.batch``."""

    item_ids: list[str]
    timestamps: list[int]
    query_time: int | None
    k: int
    exclude_seen: bool
    categories: list[str] | None
    allow: list[str] | None
    deny: list[str] | None
    ratings: list[float | None]
    rank_by: str


def _query_times(queries: list[_Query]) -> np.ndarray:
    return np.asarray(
        [q.query_time if q.query_time is not None else max(q.timestamps) for q in queries],
        np.int64,
    )


def _score_batch(served: ServedModel, queries: list[_Query]) -> list[tuple]:
    """Per query: items, scores, predicted ratings (or ``None``), unknown events, version.
    Runs in a thread: the category filters' unions and the scoring both grow with the
    catalogue, and the event loop must keep answering meanwhile."""
    model = served.recommender
    ratings = [np.asarray(q.ratings, np.float32) for q in queries]  # None -> NaN: unrated
    found = model.recommend(
        [q.item_ids for q in queries],
        [np.asarray(q.timestamps, np.int64) for q in queries],
        _query_times(queries),
        ks=[q.k for q in queries],
        exclude_seen=[q.exclude_seen for q in queries],
        allow=[served.allowed(q.categories, q.allow) for q in queries],
        deny=[q.deny for q in queries],
        ratings=ratings if model.predicts_ratings else None,
        rank_by=[q.rank_by for q in queries],
    )
    rated = found.ratings or [None] * len(queries)
    unknown = found.unknown_items
    return [
        (found.item_ids[i], found.scores[i], rated[i], int(unknown[i]), served.version)
        for i in range(len(queries))
    ]


def _log_through_serve() -> None:
    """Send this package's log lines in a replica through Serve's replica logger: to its log
    file, in its encoding (``logging_config``: TEXT or JSON), with the request id, route and
    replica of the request they were written in. Serve gives that only to ``ray.serve``'s
    handlers; our loggers would otherwise print bare lines to the worker's stderr."""
    ours = logging.getLogger(__package__.partition(".")[0])
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(min(ours.getEffectiveLevel(), logging.INFO))


def _unavailable(what: str, error: BaseException) -> HTTPException:
    """503 with one line naming the dependency; the client may send the request again."""
    reason = type(error).__name__
    return HTTPException(503, f"{what} did not answer ({reason}); try again", {"Retry-After": "1"})


@serve.deployment(
    name="recommender",
    max_ongoing_requests=32,
    max_queued_requests=64,  # beyond this, a fast 503 rather than an unbounded queue
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress()
class RecommenderService:
    """The ingress and the model in one replica: one hop per request, one model copy each."""

    def __init__(
        self, settings: dict[str, Any], run_dir: str, interests: dict[str, Any] | None = None
    ) -> None:
        self.settings = ServeConfig(**settings)
        self.interest_config = InterestConfig(**(interests or {}))
        self.run_dir = run_dir
        _log_through_serve()
        self.metrics = ServiceMetrics()
        self.key_ring = None
        if self.settings.api_keys_file:  # a missing or malformed file stops the replica here
            self.key_ring = KeyRing(
                self.settings.api_keys_file,
                self.settings.api_keys_reload_s,
                self.settings.rate_limit_per_s,
                self.settings.rate_limit_burst,
                on_reload_failure=self.metrics.key_reload_failed,
            )
        self.store = make_store(self.settings, seed_source(self.settings, run_dir))
        self.event_log = start_event_log(self.settings, run_dir)
        self.served: ServedModel | None = None
        self._follower: RegistryFollower | None = None
        self._stopped = threading.Event()
        threading.Thread(target=self._watch_event_log, name="metrics", daemon=True).start()
        # Scoring threads = the CPUs this replica holds, so replicas don't fight over cores.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self._score.set_max_batch_size(self.settings.batch_size)
        self._score.set_batch_wait_timeout_s(self.settings.batch_wait_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, self.settings.max_body_bytes, self.key_ring)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the model ``user_config`` names, without a redeploy: ``{"model_dir": DIR}`` (an
        export, with the run's calibration and catalogue) or ``{"registry": R}`` (R's current
        version, with its own; then this replica follows R's promotions)."""
        self._stop_following()
        registry = user_config.get("registry")
        if registry:
            follower = RegistryFollower(
                Registry(registry), self.settings, self.interest_config, self._serve, self._version
            )
            self._serve(follower.live())
            follower.start()
            self._follower = follower
            return
        model_dir = user_config.get("model_dir") or run_layout.model_dir(self.run_dir)
        categories = load_categories(self.settings, self.run_dir)
        self._serve(ServedModel.load(model_dir, self.run_dir, categories, self.interest_config))

    def _serve(self, served: ServedModel) -> None:
        self.served = served  # one assignment: requests in flight keep the one they read
        self.metrics.serving(served.version)
        logger.info("serving model %s", served.version)

    def _watch_event_log(self) -> None:
        """Copy the event log's backlog and failure counters into this replica's gauges."""
        while not self._stopped.wait(METRICS_POLL_S):
            try:
                self.metrics.event_log_stats(ray.get(self.event_log.stats.remote(), timeout=10))
            except Exception:  # noqa: BLE001 — a missed sample; /v1/model still answers
                logger.warning("could not read the event log's counters", exc_info=True)

    def _stop_following(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def _version(self) -> str | None:
        return self.served.version if self.served is not None else None

    def __del__(self) -> None:
        self._stop_following()
        self._stopped.set()
        if self.key_ring is not None:
            self.key_ring.close()

    async def check_health(self) -> None:
        """Serve's probe of this replica: a replica without a model is restarted. The store
        and the event log are not probed here: a replica restart cannot bring them back,
        and ``/healthz`` reports them to the load balancer instead."""
        if self.served is None:
            raise RuntimeError("no model loaded")

    async def health(self) -> Health:
        store, log, stats = "ok", "ok", {}
        try:
            await asyncio.wait_for(self.store.num_users(), HEALTH_TIMEOUT_S)
        except UNAVAILABLE as error:
            store = f"unreachable ({type(error).__name__})"
        try:
            stats = await asyncio.wait_for(self.event_log.stats.remote(), HEALTH_TIMEOUT_S)
        except UNAVAILABLE as error:
            log = f"unreachable ({type(error).__name__})"
        if stats and stats["state"] != "active":  # standing by, or retired by a deploy
            log = f"{stats['state']} (takes no events)"
        version = self._version()
        ok = version is not None and store == log == "ok"
        return Health(
            status="ok" if ok else "degraded",
            model_version=version,
            store=store,
            event_log=log,
            event_log_pending=stats.get("pending"),
            event_log_quarantined=stats.get("segments_quarantined"),
        )

    async def model(self) -> dict[str, Any]:
        model = self._served().recommender
        try:
            stats = await asyncio.wait_for(self.event_log.stats.remote(), HEALTH_TIMEOUT_S)
        except UNAVAILABLE as error:
            raise _unavailable("the event log", error) from None
        return {
            "model_version": model.model_version,
            "vocab_size": model.vocab.size,
            "num_items": model.vocab.num_items,
            "metrics": model.state.get("metrics", {}),
            "data_hash": model.state.get("data_hash"),
            "event_log": {key: stats[key] for key in EVENT_LOG_FIELDS},
        }

    async def _stored(self, user_id: str) -> History | None:
        try:
            async with self.metrics.store_call("get"):
                return await asyncio.wait_for(self.store.get(user_id), STORE_TIMEOUT_S)
        except UNAVAILABLE as error:
            raise _unavailable("the online store", error) from None

    async def history(self, user_id: str) -> HistoryResponse:
        found = await self._stored(user_id)
        if found is None:
            raise HTTPException(404, f"user {user_id!r} has no history")
        return HistoryResponse(
            user_id=user_id,
            items=[
                HistoryEvent(item_id=i, timestamp=t)
                for i, t in zip(found.item_ids, found.timestamps, strict=True)
            ],
        )

    async def interests(self, user_id: str) -> InterestsResponse:
        found = await self._stored(user_id)
        if found is None:
            raise HTTPException(404, f"user {user_id!r} has no history")
        analyzer = self._served().analyzer
        return await asyncio.to_thread(analyse_history, analyzer, user_id, found)

    async def events(self, body: EventsRequest) -> EventsResponse:
        if len(body.events) > self.settings.max_request_events:
            raise HTTPException(413, f"more than {self.settings.max_request_events} events")
        self._check_times(
            (f"events[{i}].timestamp", e.timestamp) for i, e in enumerate(body.events)
        )
        events = [Event(**e.model_dump()) for e in body.events]
        try:
            await asyncio.wait_for(self.event_log.append.remote(events), EVENT_LOG_TIMEOUT_S)
        except UNAVAILABLE as error:
            raise _unavailable("the event log", error) from None
        try:
            async with self.metrics.store_call("append"):
                await asyncio.wait_for(self.store.append(events), STORE_TIMEOUT_S)
        except UNAVAILABLE as error:  # durable in the log: the next retraining has them
            raise _unavailable("the online store", error) from None
        known = self._served().recommender.vocab.lookup([e.item_id for e in events])
        unknown = int((known < schema.NUM_SPECIAL_TOKENS).sum())
        self.metrics.accepted(len(events), unknown)
        return EventsResponse(accepted=len(events), unknown_items=unknown)

    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        self._check_request(body)
        served = self._served()
        if body.rank_by == "rating" and not served.recommender.predicts_ratings:
            raise HTTPException(422, "rank_by: the model was trained without ratings")
        if body.categories is not None:
            if served.members is None:
                raise HTTPException(422, "categories: this service has no item catalogue")
            unknown_categories = served.unknown_categories(body.categories)
            if unknown_categories:
                raise HTTPException(422, f"categories: unknown {unknown_categories[:5]}")
        history = await self._history_of(body)
        if not len(history):
            return await self._popular(body, 0, served)
        query = _Query(
            history.item_ids,
            history.timestamps,
            body.query_time,
            body.k,
            body.exclude_seen,
            body.categories,
            body.allow_items,
            body.deny_items,
            history.rating_list(),
            body.rank_by,
        )
        items, scores, ratings, unknown, version = await self._score(query)
        if unknown == len(history):  # nothing the model knows: as good as no history
            return await self._popular(body, unknown, served)
        answer = self._response(items, scores, False, unknown, version, ratings)
        if body.explain:
            await self._explain(answer, history, body.query_time, served)
        return answer

    def _check_request(self, body: RecommendRequest) -> None:
        """What the schema cannot check: the deployment's bounds."""
        if body.k > self.settings.max_k:
            raise HTTPException(422, f"k must be at most {self.settings.max_k}")
        if len(body.history) > self.settings.max_request_events:
            raise HTTPException(413, f"history longer than {self.settings.max_request_events}")
        times = [(f"history[{i}].timestamp", e.timestamp) for i, e in enumerate(body.history)]
        if body.query_time is not None:
            times.append(("query_time", body.query_time))
        self._check_times(times)

    @staticmethod
    async def _explain(answer, history: History, query_time, served: ServedModel) -> None:
        """Each item's reasons, by the model that scored it (skipped if a switch came
        between: the version the answer names must be the one that explains it)."""
        if served.version != answer.model_version:
            return
        reasons = await asyncio.to_thread(
            explain,
            served.recommender,
            history.item_ids,
            history.timestamps,
            [item.item_id for item in answer.items],
            query_time if query_time is not None else max(history.timestamps),  # as _score
            ratings=history.rating_list(),  # read as _score read them
        )
        for item in answer.items:
            item.because = [Reason(**asdict(r)) for r in reasons[item.item_id]]

    def _check_times(self, times: Iterable[tuple[str, int]]) -> None:
        """422 naming the first time outside ``serve.min_timestamp..serve.max_timestamp``."""
        low, high = self.settings.min_timestamp, self.settings.max_timestamp
        for field, value in times:
            if not low <= value <= high:
                raise HTTPException(
                    422,
                    f"{field}: {value} is outside {low}..{high} seconds "
                    "(serve.min_timestamp, serve.max_timestamp)",
                )

    async def _popular(self, body, unknown: int, served: ServedModel) -> RecommendResponse:
        """The cold-start answer, flagged as a fallback, under the request's filters."""

        def popular():
            allow = served.allowed(body.categories, body.allow_items)
            return served.recommender.popular(body.k, exclude=body.deny_items or (), allow=allow)

        items, scores = await asyncio.to_thread(popular)
        return self._response(items, scores, True, unknown, served.version)

    async def _history_of(self, body: RecommendRequest) -> History:
        """The stored history of ``user_id`` (if any) with the request's own events merged."""
        stored = await self._stored(body.user_id) if body.user_id else None
        extra = [Event("", e.item_id, e.timestamp, rating=e.rating) for e in body.history]
        if not extra:
            return stored or History()
        return merge_events(stored or History(), extra, self.settings.max_history)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score(self, queries: list[_Query]) -> list[tuple]:
        """Per query: items, scores, predicted ratings (or ``None``), unknown events, version."""
        served = self._served()  # the whole batch on one version
        return await asyncio.to_thread(_score_batch, served, queries)

    def _served(self) -> ServedModel:
        served = self.served
        if served is None:
            raise HTTPException(503, "no model loaded yet")
        return served

    def _response(self, items, scores, fallback: bool, unknown: int, version: str, ratings=None):
        self.metrics.recommended(fallback, unknown)
        rated = [None] * len(items) if ratings is None else [float(r) for r in ratings]
        return RecommendResponse(
            items=[
                ScoredItem(item_id=i, score=float(s), rating=r)
                for i, s, r in zip(items, scores, rated, strict=True)
            ],
            model_version=version,
            fallback=fallback,
            unknown_items=unknown,
        )
