"""The online service: a Ray Serve application with a versioned FastAPI ingress.

``POST /v1/events`` makes a user's new behaviour count at once: the events are first written to
the durable event log (so the next retraining sees them), then added to the shared online
store, and only then acknowledged; the user's next ``POST /v1/recommend`` scores the updated
history. No retraining is involved. Replicas hold no user state, so any replica answers any
user and autoscaling or a crashed replica loses nothing.

Scoring goes through the same :class:`Recommender` as batch scoring; concurrent requests are
scored together by ``@serve.batch``, on the GPU when the replica has one. The model comes
through ``user_config`` (``{"model_dir": ...}``), so a new model is picked up by updating the
config, without a redeploy.

Deploy with ``serve deploy serve/recommender.yaml`` or locally ``recsys-dist serve --run RUN``.
No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations as
types to know a body from a query parameter.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Annotated, Any, Literal

import numpy as np
import ray
import torch
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve

from recsys_dist import run_layout, schema, storage
from recsys_dist.config import ConfigError, InterestConfig, ServeConfig, config_from_dict
from recsys_dist.data.catalogue import catalogue_dir, items_by_category, read_categories
from recsys_dist.data.prepared import load_manifest
from recsys_dist.inference.explain import explain
from recsys_dist.inference.predictor import RANK_BY, Recommender
from recsys_dist.interests.forecast import Calibration, InterestAnalyzer
from recsys_dist.interests.record import InterestRecord
from recsys_dist.registry import Pointer, Registry, Version
from recsys_dist.serving.auth import KeyRing
from recsys_dist.serving.event_log import event_log_actor
from recsys_dist.serving.metrics import ServiceMetrics
from recsys_dist.serving.seeding import SeedSource
from recsys_dist.serving.store import ActorStore, Event, History, UserStore, merge_events

logger = logging.getLogger(__name__)

api = FastAPI(
    title="recsys_dist",
    version="1",
    description="Sequential recommendations that follow users' interests as they happen.",
)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request, error: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing its input: FastAPI's own answer echoes it,
    and a non-finite number (JSON's NaN, which Python reads) cannot be written back, which
    turned a bad request into a 500."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


# --- request and response bodies --------------------------------------------------------------

# Bounds every request is held to, in the OpenAPI schema too: ids and names this long at most,
# and at most this many entries in an item or category list (event lists: serve.max_request_events;
# times: serve.min_timestamp..serve.max_timestamp, checked per request).
MAX_ID_CHARS = 256
MAX_LIST_ITEMS = 10_000

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
IdList = Annotated[list[Id], Field(max_length=MAX_LIST_ITEMS)]
UserPath = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS)]


Rating = Annotated[float, Field(allow_inf_nan=False, description="the user's rating, if any")]
RankBy = Literal[RANK_BY]


class HistoryEvent(BaseModel):
    item_id: Id
    timestamp: int = Field(ge=0, description="seconds since the epoch")
    rating: Rating | None = None


class RecommendRequest(BaseModel):
    user_id: Id | None = None
    history: list[HistoryEvent] = Field(default_factory=list, description="recent events")
    k: int = Field(default=10, ge=1)
    exclude_seen: bool = True
    allow_items: IdList | None = Field(default=None, description="recommend only these")
    deny_items: IdList | None = Field(default=None, description="never recommend these")
    categories: IdList | None = Field(
        default=None, description="recommend only items in one of these catalogue categories"
    )
    query_time: int | None = Field(default=None, ge=0, description="default: last event")
    explain: bool = Field(
        default=False,
        description="give each item the history events it owes its score to (one more "
        "forward pass over the history, leave-one-out)",
    )
    rank_by: RankBy = Field(
        default="score",
        description="'score': the next-item score; 'rating': the predicted rating (a model "
        "trained with ratings)",
    )


class Reason(BaseModel):
    item_id: str = Field(description="a history event's item")
    timestamp: int
    weight: float = Field(description="the recommended item's score drop without this event")
    share: float = Field(description="its part of the drops of the events that raised the score")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="what the items are ranked by (rank_by)")
    rating: float | None = Field(
        default=None, description="the predicted rating (a model trained with ratings)"
    )
    because: list[Reason] | None = Field(
        default=None, description="with explain: the strongest events behind this item"
    )


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str
    fallback: bool = Field(description="true: no history to score, most popular items instead")
    unknown_items: int = Field(description="history events the model does not know (ignored)")


class EventIn(BaseModel):
    user_id: Id
    item_id: Id
    timestamp: int = Field(ge=0, description="seconds since the epoch")
    event_type: Id | None = None
    rating: Rating | None = None


class EventsRequest(BaseModel):
    events: list[EventIn] = Field(min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    unknown_items: int = Field(description="events whose item the model does not know yet")


class HistoryResponse(BaseModel):
    user_id: str
    items: list[HistoryEvent]


@dataclass
class InterestsResponse(InterestRecord):
    """The user's :class:`InterestRecord` (the shape ``interests.parquet`` and the report use
    too), with the model that made it and the names of its profiles' columns."""

    model_version: str
    groups: Annotated[
        list[str], Field(description="interest groups, the column order of every profile")
    ]


class BodyLimit:
    """413 for a body over ``app.state.max_body_bytes``: at once when ``Content-Length`` says
    so, and for a body without one (chunked) by counting the bytes as they are read, so no
    body is ever held beyond the limit. Plain ASGI: Starlette's ``BaseHTTPMiddleware`` would
    cost every request a task group on the hot path."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        limit = getattr(scope["app"].state, "max_body_bytes", None) if "app" in scope else None
        if scope["type"] != "http" or not limit:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():  # the server reads no more than this
            if int(length) > limit:
                return await self._too_large(limit, scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await self._too_large(limit, scope, receive, send)
        return await self.app(scope, _replay(bytes(body), receive), send)

    @staticmethod
    async def _too_large(limit: int, scope, receive, send) -> None:
        response = JSONResponse({"detail": f"request body over {limit} bytes"}, 413)
        await response(scope, receive, send)


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the body read already, then the connection's own."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# Open without a key: the health check for load balancers, and the API's own description.
OPEN_PATHS = frozenset(("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"))


def required_scope(path: str) -> str | None:
    """The scope a path needs (:data:`auth.SCOPES`); None: any live key."""
    if path == "/v1/recommend":
        return "recommend"
    if path == "/v1/events":
        return "events:write"
    if path.startswith("/v1/users/"):
        return "users:read"
    return None


class Authenticate:
    """401/403/429 before anything else runs, when ``app.state.key_ring`` is set
    (``serve.api_keys_file``): no body is read and no handler runs for a refused caller."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        ring = getattr(scope["app"].state, "key_ring", None) if "app" in scope else None
        if scope["type"] != "http" or ring is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        verdict = ring.check(header, required_scope(scope["path"]))
        if not verdict.status:
            return await self.app(scope, receive, send)
        headers = {"WWW-Authenticate": "Bearer"} if verdict.status == 401 else {}
        if verdict.retry_after_s:
            headers["Retry-After"] = str(verdict.retry_after_s)
        response = JSONResponse({"detail": verdict.detail}, verdict.status, headers=headers)
        await response(scope, receive, send)


api.add_middleware(BodyLimit)
api.add_middleware(Authenticate)  # added last: runs first


# --- the deployment ---------------------------------------------------------------------------
# Everything the replica class calls is defined before it: Serve serializes the class where it
# is decorated, with the module globals that exist at that line.


@dataclass
class _Query:
    """One request's scoring work, queued for ``@serve.batch``."""

    item_ids: list[str]
    timestamps: list[int]
    query_time: int | None
    k: int
    exclude_seen: bool
    allow: list[str] | None
    deny: list[str] | None
    ratings: list[float | None]
    rank_by: str


def _query_times(queries: list[_Query]) -> np.ndarray:
    return np.asarray(
        [q.query_time if q.query_time is not None else max(q.timestamps) for q in queries],
        np.int64,
    )


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


def seed_source(settings: ServeConfig, run_dir: str) -> SeedSource:
    return SeedSource(
        run_layout.prepared_dir_of(run_dir),
        _event_log_dir(settings, run_dir),
        _event_log_name(settings),
    )


def make_store(settings: ServeConfig, source: SeedSource | None = None) -> UserStore:
    """The configured store; the embedded one re-seeds itself from ``source`` after a restart
    (Redis keeps its own data)."""
    if settings.store == "redis":
        from recsys_dist.serving.redis_store import RedisStore

        return RedisStore(settings.redis_url, settings.max_history, prefix=settings.instance)
    return ActorStore(settings.max_history, name=f"{settings.instance}_user_store", source=source)


def start_event_log(settings: ServeConfig, run_dir: str) -> ray.actor.ActorHandle:
    """The service's event-log actor (created by the first caller, shared by the rest)."""
    return event_log_actor(
        _event_log_dir(settings, run_dir),
        settings.wal_dir or default_wal_dir(),
        settings.flush_rows,
        settings.flush_seconds,
        name=_event_log_name(settings),
        publish_before_ack=settings.event_log_ack == "published",
    )


def _event_log_dir(settings: ServeConfig, run_dir: str) -> str:
    return settings.event_log_dir or run_layout.event_log_dir(run_dir)


def _event_log_name(settings: ServeConfig) -> str:
    return f"{settings.instance}_event_log"


def load_categories(settings: ServeConfig, run_dir: str) -> dict[str, list[str]] | None:
    """Each item's catalogue categories, from ``serve.items_dir`` or the run's own data (the
    ``items/`` beside the events the run was prepared from); ``None`` when there is none."""
    prepared = run_layout.prepared_dir_of(run_dir)
    return read_categories(settings.items_dir or catalogue_dir(prepared))


def analyse_history(
    analyzer: InterestAnalyzer, user_id: str, history: History
) -> InterestsResponse:
    """One user's interests from their online history (raw ids; unknown items counted)."""
    indices = analyzer.recommender.vocab.lookup(history.item_ids)
    known = indices >= schema.NUM_SPECIAL_TOKENS
    times = np.asarray(history.timestamps, np.int64)[known]
    (found,) = analyzer.analyse([user_id], [indices[known]], [times], [int((~known).sum())])
    return InterestsResponse(
        **{field.name: getattr(found, field.name) for field in fields(found)},
        model_version=analyzer.recommender.model_version,
        groups=list(analyzer.groups.names),
    )


# What /v1/model reports of the event log: its backlog and what it could not publish.
EVENT_LOG_COUNTERS = (
    "pending",
    "files_written",
    "segments_quarantined",
    "torn_records",
    "publish_failures",
)
METRICS_POLL_S = 5.0  # how often a replica copies the event log's counters to its gauges

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


def default_wal_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "recsys_dist", "wal")


@dataclass(frozen=True)
class ServedModel:
    """Everything one model version serves with, swapped as a whole: a request reads it once,
    so its items, scores, interests, filters and ``model_version`` all come from one version."""

    recommender: Recommender
    analyzer: InterestAnalyzer
    items_in: dict[str, list[str]] | None  # category -> its items, for category filters
    version: str  # the model's own version (the registry's id for a registered one)

    @classmethod
    def load(
        cls,
        model_dir: str,
        calibration_run: str,
        categories: dict[str, list[str]] | None,
        interests: InterestConfig,
    ) -> "ServedModel":
        recommender = Recommender(model_dir)
        calibration = Calibration.of_run(calibration_run, interests)
        analyzer = InterestAnalyzer(recommender, categories, interests, calibration)
        items_in = items_by_category(categories) if categories else None
        return cls(recommender, analyzer, items_in, recommender.model_version)

    @classmethod
    def of_version(
        cls, version: Version, settings: ServeConfig, interests: InterestConfig
    ) -> "ServedModel":
        """A registered version with its own calibration and catalogue snapshot."""
        categories = read_categories(settings.items_dir or version.items_dir)
        return cls.load(version.model_dir, version.path, categories, interests)


@serve.deployment(
    name="recommender",
    max_ongoing_requests=32,
    max_queued_requests=64,  # beyond this, a fast 503 rather than an unbounded queue
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(api)
class RecommenderService:
    """The ingress and the model in one replica: one hop per request, one model copy each."""

    def __init__(
        self, settings: dict[str, Any], run_dir: str, interests: dict[str, Any] | None = None
    ) -> None:
        self.settings = ServeConfig(**settings)
        self.interest_config = InterestConfig(**(interests or {}))
        self.run_dir = run_dir
        api.state.max_body_bytes = self.settings.max_body_bytes
        api.state.key_ring = None
        if self.settings.api_keys_file:
            api.state.key_ring = KeyRing(
                self.settings.api_keys_file,
                self.settings.api_keys_reload_s,
                self.settings.rate_limit_per_s,
                self.settings.rate_limit_burst,
            )
        _log_through_serve()
        self.metrics = ServiceMetrics()
        self.store = make_store(self.settings, seed_source(self.settings, run_dir))
        self.event_log = start_event_log(self.settings, run_dir)
        self.served: ServedModel | None = None
        self._following: threading.Event | None = None  # set: stop following a registry
        self._stopped = threading.Event()
        threading.Thread(target=self._watch_event_log, name="metrics", daemon=True).start()
        # Scoring threads = the CPUs this replica holds, so replicas don't fight over cores.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self._score.set_max_batch_size(self.settings.batch_size)
        self._score.set_batch_wait_timeout_s(self.settings.batch_wait_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the model ``user_config`` names, without a redeploy: ``{"model_dir": DIR}`` (an
        export, with the run's calibration and catalogue) or ``{"registry": R}`` (R's current
        version, with its own; then this replica follows R, see :meth:`_follow`)."""
        self._stop_following()
        registry = user_config.get("registry")
        if registry:
            self._serve(self._live_of(Registry(registry)))
            self._follow(Registry(registry))
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

    def _live_of(self, registry: Registry) -> ServedModel:
        """The version the fleet serves now: the current one, or, before its switch instant,
        the one it replaced (a replica that starts mid-switch must not run ahead of the
        others)."""
        pointer = registry.pointer()
        if pointer is None:
            raise RuntimeError(f"{registry.root}: no current version to serve")
        live = pointer.version
        if pointer.previous and time.time() < self._switch_instant(pointer):
            live = pointer.previous
        return ServedModel.of_version(registry.get(live), self.settings, self.interest_config)

    def _switch_instant(self, pointer: Pointer) -> float:
        return pointer.updated_at + self.settings.registry_switch_s

    def _follow(self, registry: Registry) -> None:
        """Poll the registry's pointer in a thread. A newly promoted (or rolled back to)
        version is loaded off the request path, then swapped in at the fleet's switch instant
        (``serve.registry_switch_s`` after the promotion, by each replica's clock), so every
        replica moves at once. A failed check or load is logged and retried at the next poll:
        the replica keeps serving the version it has."""
        stop = self._following = threading.Event()

        def follow() -> None:
            while not stop.wait(self.settings.registry_poll_s):
                try:
                    self._catch_up(registry, stop)
                except Exception:  # noqa: BLE001 — keep serving; try again next poll
                    logger.exception(
                        "following %s failed; still serving %s", registry.root, self._version()
                    )

        threading.Thread(target=follow, name="registry-follower", daemon=True).start()

    def _catch_up(self, registry: Registry, stop: threading.Event) -> None:
        pointer = registry.pointer()
        if pointer is None or pointer.version == self._version():
            return
        staged = ServedModel.of_version(
            registry.get(pointer.version), self.settings, self.interest_config
        )
        wait = self._switch_instant(pointer) - time.time()
        if wait > 0 and stop.wait(wait):
            return
        if registry.pointer() != pointer:  # moved again while waiting: the next poll decides
            return
        if self.settings.registry_switch_s and wait < 0:
            logger.warning(
                "switched to %s %.1f s after the fleet's instant (loading took too long: "
                "raise serve.registry_switch_s)",
                pointer.version,
                -wait,
            )
        self._serve(staged)

    def _stop_following(self) -> None:
        if self._following is not None:
            self._following.set()

    def _version(self) -> str | None:
        return self.served.version if self.served is not None else None

    def __del__(self) -> None:
        self._stop_following()
        self._stopped.set()

    async def check_health(self) -> None:
        if self.served is None:
            raise RuntimeError("no model loaded")
        await self.store.num_users()  # the store must answer too

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        await self.check_health()
        return {"status": "ok"}

    @api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """The served version, and the event log's backlog and failures (a quarantined
        segment holds acknowledged events that need a person)."""
        model = self._served().recommender
        stats = await self.event_log.stats.remote()
        return {
            "model_version": model.model_version,
            "vocab_size": model.vocab.size,
            "num_items": model.vocab.num_items,
            "metrics": model.state.get("metrics", {}),
            "data_hash": model.state.get("data_hash"),
            "event_log": {key: stats[key] for key in EVENT_LOG_COUNTERS},
        }

    async def _stored(self, user_id: str) -> History | None:
        async with self.metrics.store_call("get"):
            return await self.store.get(user_id)

    @api.get("/v1/users/{user_id}/history", response_model=HistoryResponse)
    async def history(self, user_id: UserPath) -> HistoryResponse:
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

    @api.get("/v1/users/{user_id}/interests", response_model=InterestsResponse)
    async def interests(self, user_id: UserPath) -> InterestsResponse:
        """Trajectory, current profile, drift, change points and forecast, from the user's
        online history: events posted a moment ago count."""
        found = await self._stored(user_id)
        if found is None:
            raise HTTPException(404, f"user {user_id!r} has no history")
        analyzer = self._served().analyzer
        return await asyncio.to_thread(analyse_history, analyzer, user_id, found)

    @api.post("/v1/events", response_model=EventsResponse)
    async def events(self, body: EventsRequest) -> EventsResponse:
        """Durable first (the event log), visible next (the store), then acknowledged."""
        if len(body.events) > self.settings.max_request_events:
            raise HTTPException(413, f"more than {self.settings.max_request_events} events")
        self._check_times(
            (f"events[{i}].timestamp", e.timestamp) for i, e in enumerate(body.events)
        )
        events = [Event(**e.model_dump()) for e in body.events]
        await self.event_log.append.remote(events)
        async with self.metrics.store_call("append"):
            await self.store.append(events)
        known = self._served().recommender.vocab.lookup([e.item_id for e in events])
        unknown = int((known < schema.NUM_SPECIAL_TOKENS).sum())
        self.metrics.accepted(len(events), unknown)
        return EventsResponse(accepted=len(events), unknown_items=unknown)

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        if body.k > self.settings.max_k:
            raise HTTPException(422, f"k must be at most {self.settings.max_k}")
        if len(body.history) > self.settings.max_request_events:
            raise HTTPException(413, f"history longer than {self.settings.max_request_events}")
        times = [(f"history[{i}].timestamp", e.timestamp) for i, e in enumerate(body.history)]
        if body.query_time is not None:
            times.append(("query_time", body.query_time))
        self._check_times(times)
        served = self._served()
        if body.rank_by == "rating" and not served.recommender.predicts_ratings:
            raise HTTPException(422, "rank_by: the model was trained without ratings")
        allow = self._allowed(body, served)
        history = await self._history_of(body)
        if not len(history):
            return self._popular(body, allow, 0, served)
        query = _Query(
            history.item_ids,
            history.timestamps,
            body.query_time,
            body.k,
            body.exclude_seen,
            allow,
            body.deny_items,
            history.rating_list(),
            body.rank_by,
        )
        items, scores, ratings, unknown, version = await self._score(query)
        if unknown == len(history):  # nothing the model knows: as good as no history
            return self._popular(body, allow, unknown, served)
        answer = self._response(items, scores, False, unknown, version, ratings)
        if body.explain:
            await self._explain(answer, history, body.query_time, served)
        return answer

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

    def _popular(self, body, allow, unknown: int, served: ServedModel) -> RecommendResponse:
        """The cold-start answer, flagged as a fallback, under the request's filters."""
        model = served.recommender
        items, scores = model.popular(body.k, exclude=body.deny_items or (), allow=allow)
        return self._response(items, scores, True, unknown, served.version)

    def _allowed(self, body: RecommendRequest, served: ServedModel) -> list[str] | None:
        """``allow_items`` narrowed to the requested categories (``None``: no restriction)."""
        if body.categories is None:
            return body.allow_items
        if served.items_in is None:
            raise HTTPException(422, "categories: this service has no item catalogue")
        unknown = [c for c in body.categories if c not in served.items_in]
        if unknown:
            raise HTTPException(422, f"categories: unknown {unknown[:5]}")
        in_categories = {i for c in body.categories for i in served.items_in[c]}
        if body.allow_items is None:
            return sorted(in_categories)
        return [i for i in body.allow_items if i in in_categories]

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
        model = self._served().recommender  # the whole batch on one version
        ratings = [np.asarray(q.ratings, np.float32) for q in queries]  # None -> NaN: unrated
        found = await asyncio.to_thread(
            model.recommend,
            [q.item_ids for q in queries],
            [np.asarray(q.timestamps, np.int64) for q in queries],
            _query_times(queries),
            ks=[q.k for q in queries],
            exclude_seen=[q.exclude_seen for q in queries],
            allow=[q.allow for q in queries],
            deny=[q.deny for q in queries],
            ratings=ratings if model.predicts_ratings else None,
            rank_by=[q.rank_by for q in queries],
        )
        rated = found.ratings or [None] * len(queries)
        unknown = found.unknown_items
        return [
            (found.item_ids[i], found.scores[i], rated[i], int(unknown[i]), model.model_version)
            for i in range(len(queries))
        ]

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


def seed_store(settings: ServeConfig, run_dir: str) -> int:
    """Fill an empty store from the run's prepared dataset and the service's event log (the
    events posted since, :mod:`recsys_dist.serving.seeding`); returns users loaded.

    A store that already holds users (a previous deployment's, or Redis's own persistence) is
    left alone, so a redeploy never overwrites events that arrived online. The event log is
    started first, so it publishes what a previous deployment left in its WAL.
    """
    source = seed_source(settings, run_dir)
    load_manifest(source.prepared_dir)  # a clear error if the run's data is gone
    start_event_log(settings, run_dir)
    return asyncio.run(_seed(make_store(settings, source), source))


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
) -> str:
    """Start the service on this Ray cluster (``recsys-dist serve``); returns its base URL.

    With ``registry``, ``run_dir`` is its current version's directory: the service serves
    that version and follows the registry's promotions by itself, and its event log defaults
    to ``event_log/`` beside the registry. ``deployment`` overrides the decorator's Serve
    options (e.g. ``num_replicas`` or an ``autoscaling_config``); ``serve deploy`` with
    ``serve/recommender.yaml`` sets them on a cluster.
    """
    if registry and not settings.event_log_dir:
        settings = replace(settings, event_log_dir=run_layout.event_log_dir(registry))
    serve.start(http_options={"host": host, "port": port})
    seed_store(settings, run_dir)
    model = {"model_dir": model_dir or run_layout.model_dir(run_dir)}
    if registry:
        model = {"registry": storage.absolute(registry)}
    logs = {"encoding": settings.log_encoding}
    options = {"user_config": model, "logging_config": logs, **(deployment or {})}
    interest_settings = asdict(interests or InterestConfig())
    app = RecommenderService.options(**options).bind(asdict(settings), run_dir, interest_settings)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application builder ``serve deploy``/``serve run`` call with the config's ``args``:
    ``run`` (the run directory) and optional ``serve`` and ``interests`` settings (fields of
    ``ServeConfig`` and ``InterestConfig``, checked like every config). An empty store is
    seeded from the run's prepared users first.

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
    seed_store(config.serve, args["run"])
    return RecommenderService.bind(asdict(config.serve), args["run"], asdict(config.interests))
