"""The HTTP surface alone (no Ray): every endpoint under every scope, under ``/`` and a route
prefix, the limits a request meets before any handler, and what the schema bounds.

The app is the one a replica builds (:func:`build_api`), in front of handlers that answer at
once; tests/e2e/test_scopes.py runs the same matrix through a real Serve deployment.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest
from pydantic import ValidationError

from recsys_dist.serving import schemas
from recsys_dist.serving.api import EXPLAIN_NEEDS_USERS_READ, build_api
from recsys_dist.serving.auth import FAILURE_BURST, KeyRing, KeysFile
from recsys_dist.serving.middleware import route_path
from recsys_dist.serving.schemas import (
    EventsResponse,
    Health,
    HistoryResponse,
    RecommendResponse,
)

USER = "u1"
HISTORY = [{"item_id": "i1", "timestamp": 10}]
# (name, method, path, body, the scopes a key needs; None: open to anyone)
ENDPOINTS = [
    ("healthz", "GET", "/healthz", None, None),
    ("openapi", "GET", "/openapi.json", None, None),
    ("docs", "GET", "/docs", None, None),
    ("model", "GET", "/v1/model", None, set()),
    ("recommend", "POST", "/v1/recommend", {"user_id": USER}, {"recommend"}),
    (
        "explain-stored",
        "POST",
        "/v1/recommend",
        {"user_id": USER, "explain": True},
        {"recommend", "users:read"},
    ),
    ("explain-own", "POST", "/v1/recommend", {"history": HISTORY, "explain": True}, {"recommend"}),
    (
        "events",
        "POST",
        "/v1/events",
        {"events": [{"user_id": USER, "item_id": "i1", "timestamp": 5}]},
        {"events:write"},
    ),
    ("history", "GET", f"/v1/users/{USER}/history", None, {"users:read"}),
    ("interests", "GET", f"/v1/users/{USER}/interests", None, {"users:read"}),
]
KEYS = {
    "recommend": ["recommend"],
    "events": ["events:write"],
    "users": ["users:read"],
    "recommend+users": ["recommend", "users:read"],
}
CALLERS = ["none", "bad", *KEYS]


class Handlers:
    """Answers every route at once; records what reached it."""

    def __init__(self) -> None:
        self.called: list[str] = []

    async def health(self):
        self.called.append("health")
        return Health(status="ok", model_version="v", store="ok", event_log="ok")

    async def model(self):
        self.called.append("model")
        return {"model_version": "v"}

    async def history(self, user_id):
        self.called.append("history")
        return HistoryResponse(user_id=user_id, items=[])

    async def interests(self, user_id):
        self.called.append("interests")
        from fastapi import HTTPException

        raise HTTPException(404, "no history")  # reached: the scope let it through

    async def events(self, body):
        self.called.append("events")
        return EventsResponse(accepted=len(body.events), unknown_items=0)

    async def recommend(self, body):
        self.called.append("recommend")
        return RecommendResponse(items=[], model_version="v", fallback=True, unknown_items=0)


@pytest.fixture
def secrets(tmp_path) -> tuple[str, dict[str, str]]:
    keys = KeysFile(str(tmp_path / "keys.json"))
    return keys.path, {name: keys.create(name, scopes) for name, scopes in KEYS.items()}


def client(app, root: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path=root, client=("10.0.0.7", 1234))
    return httpx.AsyncClient(transport=transport, base_url=f"http://test{root}")


def expected(scopes: set[str] | None, caller: str) -> int:
    if scopes is None:
        return 200
    if caller in ("none", "bad"):
        return 401
    return 200 if scopes <= set(KEYS[caller]) else 403


def call(http: httpx.AsyncClient, method: str, path: str, body, headers) -> httpx.Response:
    return http.request(method, path.lstrip("/"), json=body, headers=headers)


@pytest.mark.parametrize("root", ["", "/recs"])
def test_every_endpoint_answers_every_caller_by_its_scope(secrets, root):
    path, secret_of = secrets
    handlers = Handlers()
    ring = KeyRing(path, reload_s=3600)
    app = build_api(handlers, max_body_bytes=100_000, key_ring=ring)
    headers = {"none": {}, "bad": {"Authorization": "Bearer rsd_not-a-key"}}
    headers |= {name: {"Authorization": f"Bearer {secret}"} for name, secret in secret_of.items()}

    async def matrix():
        found = {}
        async with client(app, root) as http:
            for (name, method, url, body, _), caller in itertools.product(ENDPOINTS, CALLERS):
                found[name, caller] = await call(http, method, url, body, headers[caller])
        return found

    try:
        answers = asyncio.run(matrix())
    finally:
        ring.close()
    wrong = {}
    for (name, _, _, _, scopes), caller in itertools.product(ENDPOINTS, CALLERS):
        status = answers[name, caller].status_code
        if name == "interests" and status == 404:  # the handler's own answer: let through
            status = 200
        if status != expected(scopes, caller):
            wrong[name, caller] = (status, expected(scopes, caller))
    assert not wrong, wrong
    refused = answers["explain-stored", "recommend"]
    assert refused.json()["detail"] == EXPLAIN_NEEDS_USERS_READ
    assert answers["model", "none"].headers["www-authenticate"] == "Bearer"


def test_without_keys_every_endpoint_is_open():
    app = build_api(Handlers(), max_body_bytes=100_000, key_ring=None)

    async def everything():
        async with client(app) as http:
            return [await call(http, m, url, body, {}) for _, m, url, body, _ in ENDPOINTS]

    statuses = [r.status_code for r in asyncio.run(everything())]
    assert statuses == [200] * 9 + [404], statuses


@pytest.mark.parametrize(
    ("path", "root", "within"),
    [
        ("/v1/recommend", "", "/v1/recommend"),
        ("/recs/v1/recommend", "/recs", "/v1/recommend"),
        ("/recs/healthz", "/recs/", "/healthz"),
        ("/recsys/v1/events", "/recs", "/recsys/v1/events"),  # another prefix: not ours
        ("/recs", "/recs", "/"),
    ],
)
def test_paths_are_matched_within_the_route_prefix(path, root, within):
    assert route_path({"path": path, "root_path": root}) == within


def test_failed_authentications_are_limited_per_address(secrets):
    """After a burst of bad keys, the address is refused before its key is checked, even a
    right one (else guessing would go on at full rate); another address is not."""
    path, secret_of = secrets
    ring = KeyRing(path, reload_s=3600)
    app = build_api(Handlers(), max_body_bytes=100_000, key_ring=ring)
    good = {"Authorization": f"Bearer {secret_of['recommend']}"}

    async def guesses():
        async with client(app) as http:
            bad = [
                await call(http, "POST", "/v1/recommend", {}, {"Authorization": f"Bearer g{n}"})
                for n in range(FAILURE_BURST + 3)
            ]
            right = await call(http, "POST", "/v1/recommend", {}, good)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.8", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
            elsewhere = await other.post("/v1/recommend", json={}, headers=good)
        return bad, right, elsewhere

    try:
        bad, right, elsewhere = asyncio.run(guesses())
    finally:
        ring.close()
    statuses = [r.status_code for r in bad]
    assert statuses[:FAILURE_BURST] == [401] * FAILURE_BURST and set(statuses[FAILURE_BURST:]) == {
        429
    }
    assert int(bad[-1].headers["retry-after"]) >= 1
    assert right.status_code == 429, "a right key from a guessing address went through"
    assert elsewhere.status_code == 200


def test_a_body_over_the_limit_is_refused_before_any_handler():
    handlers = Handlers()
    app = build_api(handlers, max_body_bytes=2048, key_ring=None)
    big = json.dumps({"user_id": "u", "deny_items": ["x" * 200] * 20}).encode()

    async def post():
        async with client(app) as http:
            return await http.post("/v1/recommend", content=big)

    answer = asyncio.run(post())
    assert answer.status_code == 413 and "over 2048 bytes" in answer.text
    assert handlers.called == []


def test_categories_are_capped_and_repeats_ignored():
    half = [f"c{n}" for n in range(schemas.MAX_CATEGORIES // 2)]
    request = schemas.RecommendRequest(categories=[*half, *half])  # the most entries allowed
    assert request.categories == half
    repeated = schemas.RecommendRequest(categories=["a", "b", "a", "a"])
    assert repeated.categories == ["a", "b"]
    with pytest.raises(ValidationError, match="categories"):
        schemas.RecommendRequest(categories=["a"] * (schemas.MAX_CATEGORIES + 1))
    openapi = build_api(Handlers(), 1024, None).openapi()["components"]["schemas"]
    assert openapi["RecommendRequest"]["properties"]["categories"]["anyOf"][0]["maxItems"] == (
        schemas.MAX_CATEGORIES
    )
