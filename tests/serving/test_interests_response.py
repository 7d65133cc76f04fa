"""``GET /v1/users/{id}/interests`` answers with the one interest record: the keys clients rely
on (docs/serving.md, tests/e2e/test_serve.py) stay, and the OpenAPI schema documents them."""

from __future__ import annotations

import dataclasses

from pydantic import TypeAdapter

from recsys_dist.interests.record import ChangePointRecord, InterestRecord, MovedGroup
from recsys_dist.serving.api import build_api
from recsys_dist.serving.schemas import InterestsResponse

# The answer's keys before the record was shared (adding one is fine, renaming is not).
ANSWER_KEYS = {
    "user_id", "model_version", "groups", "events", "unknown_items", "window_starts",
    "window_counts", "profiles", "current", "top_group", "drift", "change_points", "forecast",
    "forecast_top_group",
}  # fmt: skip
CHANGE_POINT_KEYS = {"index", "timestamp", "score", "divergence", "rose", "fell"}


def answer() -> InterestsResponse:
    point = ChangePointRecord(2, 50, 1.5, 0.25, [MovedGroup("b", 0.0, 1.0)], [])
    record = InterestRecord(
        "u", 4, 1, [10, 50], [2, 2], [[1.0, 0.0], [0.0, 1.0]], [0.0, 1.0], "b", 0.5,
        [point], [0.25, 0.75], "b",
    )  # fmt: skip
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return InterestsResponse(**fields, model_version="v1", groups=["a", "b"])


def test_the_answer_is_the_record_plus_model_version_and_groups():
    assert issubclass(InterestsResponse, InterestRecord)
    body = TypeAdapter(InterestsResponse).dump_python(answer(), mode="json")
    assert set(body) == ANSWER_KEYS
    assert set(body["change_points"][0]) == CHANGE_POINT_KEYS
    assert body["change_points"][0]["rose"] == [{"group": "b", "before": 0.0, "after": 1.0}]


def test_openapi_documents_the_record():
    api = build_api(handlers=None, max_body_bytes=1024, key_ring=None)  # the schema alone
    schemas = api.openapi()["components"]["schemas"]
    answer_fields = schemas["InterestsResponse"]["properties"]
    assert set(answer_fields) == ANSWER_KEYS
    for name in ("groups", "unknown_items", "profiles", "drift", "forecast"):
        assert answer_fields[name]["description"], name
    assert schemas["ChangePointRecord"]["properties"]["divergence"]["description"]
    assert schemas["MovedGroup"]["properties"]["before"]["description"]
