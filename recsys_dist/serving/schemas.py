"""The service's request and response bodies, and the bounds every request is held to.

The bounds are in the OpenAPI schema too, so a client learns them from ``/openapi.json``:
ids and names at most :data:`MAX_ID_CHARS` long, item lists at most :data:`MAX_LIST_ITEMS`
entries, category filters at most :data:`MAX_CATEGORIES` (duplicates ignored). Event lists are
bounded by ``serve.max_request_events`` and times by ``serve.min_timestamp..max_timestamp``,
settings of the deployment, checked per request.

No ``from __future__ import annotations`` here: FastAPI and pydantic read these annotations
as types.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from recsys_dist.inference.predictor import RANK_BY
from recsys_dist.interests.record import InterestRecord

MAX_ID_CHARS = 256
MAX_LIST_ITEMS = 10_000
# A category filter names a few shelves of a catalogue; each one named costs the replica a
# union over that category's items, so the list is short (docs/operations.md, "Bounds").
MAX_CATEGORIES = 100

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
IdList = Annotated[list[Id], Field(max_length=MAX_LIST_ITEMS)]


def _distinct(names: list[str]) -> list[str]:
    """The names in first-seen order, each once: a repeated category adds nothing."""
    return list(dict.fromkeys(names))


CategoryList = Annotated[list[Id], Field(max_length=MAX_CATEGORIES), AfterValidator(_distinct)]
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
    categories: CategoryList | None = Field(
        default=None,
        description=f"recommend only items in one of these catalogue categories (at most "
        f"{MAX_CATEGORIES}; repeats are ignored)",
    )
    query_time: int | None = Field(default=None, ge=0, description="default: last event")
    explain: bool = Field(
        default=False,
        description="give each item the history events it owes its score to (one more "
        "forward pass over the history, leave-one-out); over a stored history (user_id) it "
        "needs the users:read scope, over the request's own history only recommend",
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


class Health(BaseModel):
    """``GET /healthz``: 200 when the model, the online store and the event log all answer,
    503 (the same body) when one does not, so a load balancer stops sending traffic here."""

    status: Literal["ok", "degraded"]
    model_version: str | None = Field(description="null: no model loaded yet")
    store: str = Field(description="'ok', or why the online store did not answer")
    event_log: str = Field(
        description="'ok', or why the event log takes no events: unreachable, or standing "
        "by while another log holds its WAL directory"
    )
    event_log_pending: int | None = Field(
        default=None, description="acknowledged events in the WAL, not yet published"
    )
    event_log_quarantined: int | None = Field(
        default=None, description="WAL segments that need a person (docs/operations.md)"
    )
