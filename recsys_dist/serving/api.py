"""The service's HTTP surface: a FastAPI app built per replica around its handlers.

Each replica builds its own app (Serve's late-bound ingress, ``__serve_build_asgi_app__``)
with the middlewares given their settings and key ring directly: nothing is configured by
mutating a module-level app that every replica of the process would share.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations as
types to know a body from a query parameter.
"""

from typing import Annotated, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recsys_dist.serving.auth import KeyRing
from recsys_dist.serving.middleware import Authenticate, BodyLimit, granted
from recsys_dist.serving.schemas import (
    MAX_ID_CHARS,
    EventsRequest,
    EventsResponse,
    Health,
    HistoryResponse,
    InterestsResponse,
    RecommendRequest,
    RecommendResponse,
)

UserPath = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS)]


class Handlers(Protocol):
    """What the app calls: the replica's methods (:class:`RecommenderService`)."""

    async def health(self) -> Health: ...
    async def model(self) -> dict: ...
    async def history(self, user_id: str) -> HistoryResponse: ...
    async def interests(self, user_id: str) -> InterestsResponse: ...
    async def events(self, body: EventsRequest) -> EventsResponse: ...
    async def recommend(self, body: RecommendRequest) -> RecommendResponse: ...


EXPLAIN_NEEDS_USERS_READ = (
    "explain with a user_id shows events of the stored history: the key needs the scope "
    "'users:read' too (or send the history in the request, without user_id)"
)


def build_api(handlers: Handlers, max_body_bytes: int, key_ring: KeyRing | None) -> FastAPI:
    """The versioned API over ``handlers``; the key check runs first, then the body limit."""
    api = FastAPI(
        title="recsys_dist",
        version="1",
        description="Sequential recommendations that follow users' interests as they happen.",
    )
    api.add_exception_handler(RequestValidationError, _invalid_request)
    api.add_middleware(BodyLimit, limit=max_body_bytes)
    if key_ring is not None:
        api.add_middleware(Authenticate, ring=key_ring)  # added last: runs first

    @api.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        health = await handlers.health()
        return JSONResponse(health.model_dump(), 200 if health.status == "ok" else 503)

    @api.get("/v1/model")
    async def model() -> dict:
        """The served version, and the event log's backlog and failures (a quarantined
        segment holds acknowledged events that need a person)."""
        return await handlers.model()

    @api.get("/v1/users/{user_id}/history", response_model=HistoryResponse)
    async def history(user_id: UserPath) -> HistoryResponse:
        return await handlers.history(user_id)

    @api.get("/v1/users/{user_id}/interests", response_model=InterestsResponse)
    async def interests(user_id: UserPath) -> InterestsResponse:
        """Trajectory, current profile, drift, change points and forecast, from the user's
        online history: events posted a moment ago count."""
        return await handlers.interests(user_id)

    @api.post("/v1/events", response_model=EventsResponse)
    async def events(body: EventsRequest) -> EventsResponse:
        """Durable first (the event log), visible next (the store), then acknowledged."""
        return await handlers.events(body)

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        """Reasons built from a stored history show its events: reading them is what
        ``users:read`` is for, whichever route they come by."""
        if body.explain and body.user_id is not None and not granted(request, "users:read"):
            raise HTTPException(403, EXPLAIN_NEEDS_USERS_READ)
        return await handlers.recommend(body)

    return api


async def _invalid_request(request, error: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing its input: FastAPI's own answer echoes it,
    and a non-finite number (JSON's NaN, which Python reads) cannot be written back, which
    turned a bad request into a 500."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})
