"""What every request meets before a handler runs: the key check, then the body limit.

Plain ASGI middlewares, each given its settings when the replica builds its app (nothing is
read from a shared module-level object): Starlette's ``BaseHTTPMiddleware`` would cost every
request a task group on the hot path.

Paths are matched relative to the application's route prefix (Serve hands the replica the
full path, with the prefix in ``root_path``), so a scope holds whatever prefix the
application is deployed under.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from recsys_dist.serving.auth import KeyRing

Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]

# Open without a key: the health check for load balancers, and the API's own description.
OPEN_PATHS = frozenset(("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"))
API_KEY = "api_key"  # where an authenticated request's key is kept (``request.state``)


def route_path(scope: Scope) -> str:
    """The request's path within the application: ``/v1/recommend`` whether the application
    is deployed at ``/`` or under ``/recs``."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return path[len(root.rstrip("/")) :] or "/"
    return path


def required_scope(path: str) -> str | None:
    """The scope a path (within the application) needs (:data:`auth.SCOPES`); None: any
    live key."""
    if path == "/v1/recommend":
        return "recommend"
    if path == "/v1/events":
        return "events:write"
    if path.startswith("/v1/users/"):
        return "users:read"
    return None


def granted(request: Request, scope: str) -> bool:
    """Whether the request's key holds ``scope`` (every request does without keys): for what
    a handler decides from the body, such as explaining from a stored history."""
    state = request.scope.get("state", {})
    if API_KEY not in state:  # no Authenticate in front: a service without keys (loopback)
        return True
    key = state[API_KEY]  # None on the open paths
    return key is not None and scope in key.scopes


class Authenticate:
    """401/403/429 before anything else runs: no body is read and no handler runs for a
    refused caller. An accepted request carries its key in ``request.state``."""

    def __init__(self, app: ASGIApp, ring: KeyRing) -> None:
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        if path in OPEN_PATHS:
            scope.setdefault("state", {})[API_KEY] = None
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        client = (scope.get("client") or ("",))[0]
        verdict = self.ring.check(header, required_scope(path), client)
        if not verdict.status:
            scope.setdefault("state", {})[API_KEY] = verdict.key
            return await self.app(scope, receive, send)
        headers = {"WWW-Authenticate": "Bearer"} if verdict.status == 401 else {}
        if verdict.retry_after_s:
            headers["Retry-After"] = str(verdict.retry_after_s)
        response = JSONResponse({"detail": verdict.detail}, verdict.status, headers=headers)
        await response(scope, receive, send)


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once when ``Content-Length`` says so, and for a
    body without one (chunked) by counting the bytes as they are read, so no body is ever
    held beyond the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():  # the server reads no more than this
            if int(length) > self.limit:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
        return await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)
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
