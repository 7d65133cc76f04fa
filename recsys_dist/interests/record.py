"""One user's interests as one record: the shape every consumer of an analysis shares.

``recsys-dist interests`` writes it as a row of ``interests.parquet`` (:data:`INTEREST_SCHEMA`),
``GET /v1/users/{id}/interests`` answers with it as JSON (adding the model version and the
group names), and the HTML report draws it. The records are plain dataclasses of JSON-ready
values (no numpy): ``to_row()`` and ``InterestRecord.from_row()`` convert to and from a
Parquet row or a JSON object. The descriptions are pydantic ``Field`` metadata, which the
dataclasses ignore and the service's OpenAPI schema shows.

Every profile lists shares in the order of the analysis' interest groups (``groups.json``
beside the Parquet file; ``groups`` in the HTTP answer and in the report data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from recsys_dist import schema

if TYPE_CHECKING:
    from recsys_dist.interests.drift import ChangePoint
    from recsys_dist.interests.profiles import Trajectory


@dataclass
class MovedGroup:
    """A group whose share moved at a change point."""

    group: Annotated[str, Field(description="interest group name")]
    before: Annotated[float, Field(description="share of the group before the change")]
    after: Annotated[float, Field(description="share of the group after the change")]


@dataclass
class ChangePointRecord:
    """When a user's interests moved."""

    index: Annotated[int, Field(description="the first event (in the history) of the new regime")]
    timestamp: Annotated[int, Field(description="time of that event, seconds since the epoch")]
    score: Annotated[float, Field(description="likelihood-ratio gain over the threshold it beat")]
    divergence: Annotated[
        float, Field(description="JS divergence between the profiles either side")
    ]
    rose: Annotated[list[MovedGroup], Field(description="groups that rose, largest rise first")]
    fell: Annotated[list[MovedGroup], Field(description="groups that fell, largest fall first")]


@dataclass
class InterestRecord:
    """One user's interests: trajectory, current profile, drift, change points, forecast."""

    user_id: str
    events: Annotated[int, Field(description="events analysed (items the model knows)")]
    unknown_items: Annotated[int, Field(description="events whose item the model does not know")]
    window_starts: Annotated[
        list[int], Field(description="the trajectory: first event time per window")
    ]
    window_counts: Annotated[list[int], Field(description="events per window")]
    profiles: Annotated[
        list[list[float]], Field(description="group shares per window, each row sums to 1")
    ]
    current: Annotated[list[float], Field(description="profile of the recent windows")]
    top_group: Annotated[
        str | None, Field(description="largest group of the current profile; null if none")
    ]
    drift: Annotated[float, Field(description="JS divergence (bits), recent vs long-term profile")]
    change_points: Annotated[
        list[ChangePointRecord], Field(description="when interests moved, oldest first")
    ]
    forecast: Annotated[
        list[float] | None,
        Field(description="predicted profile of the next window; null without known items"),
    ]
    forecast_top_group: Annotated[
        str | None, Field(description="largest group of the forecast; null without one")
    ]

    def to_row(self) -> dict[str, Any]:
        """A row of :data:`INTEREST_SCHEMA`, or a JSON object (nested records as dicts)."""
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> InterestRecord:
        """Rebuild from ``to_row()`` output (a Parquet row or parsed JSON); unknown or missing
        keys raise ``ValueError``, so a stale file fails loudly instead of losing a field."""
        check_keys(cls, row)
        points = []
        for point in row["change_points"]:
            check_keys(ChangePointRecord, point)
            moves = {side: [_move(m) for m in point[side]] for side in ("rose", "fell")}
            points.append(ChangePointRecord(**{**point, **moves}))
        return cls(**{**row, "change_points": points})


def _move(raw: Mapping[str, Any]) -> MovedGroup:
    check_keys(MovedGroup, raw)
    return MovedGroup(**raw)


def check_keys(cls: type, raw: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the keys of ``raw`` that are not ``cls``'s fields and the
    fields it lacks."""
    expected = {field.name for field in fields(cls)}
    unknown, missing = set(raw) - expected, expected - set(raw)
    if unknown or missing:
        raise ValueError(
            f"{cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )


def from_analysis(
    user_id: str,
    path: Trajectory,
    current: np.ndarray,
    drift: float,
    points: Sequence[ChangePoint],
    forecast: np.ndarray | None,
    names: Sequence[str],
    unknown_items: int = 0,
) -> InterestRecord:
    """The record of one analysed user: numpy arrays become lists, group indices names.

    Args:
        user_id: The user's id.
        path: Their trajectory (windows oldest first).
        current: ``[G]`` profile of the recent windows (all zero without known events).
        drift: Jensen-Shannon divergence of the recent vs the long-term profile.
        points: Change points, oldest first.
        forecast: ``[G]`` forecast of the next window, or None without known items.
        names: Group names, in column order.
        unknown_items: The user's events whose item the model does not know.
    """

    def moves(listed) -> list[MovedGroup]:
        return [MovedGroup(names[g], float(b), float(a)) for g, b, a in listed]

    return InterestRecord(
        user_id=user_id,
        events=int(path.counts.sum()),
        unknown_items=int(unknown_items),
        window_starts=path.starts.tolist(),
        window_counts=path.counts.tolist(),
        profiles=path.profiles.tolist(),
        current=current.tolist(),
        top_group=names[int(current.argmax())] if current.sum() > 0 else None,
        drift=float(drift),
        change_points=[
            ChangePointRecord(
                int(p.index),
                int(p.timestamp),
                float(p.score),
                float(p.divergence),
                moves(p.rose),
                moves(p.fell),
            )
            for p in points
        ],
        forecast=None if forecast is None else forecast.tolist(),
        forecast_top_group=None if forecast is None else names[int(np.argmax(forecast))],
    )


# The same record in Arrow, declared field by field in the dataclasses' order (a test checks
# they agree), with the storage types: float32 shares, int32 counts.
MOVED_GROUP_TYPE = pa.struct(
    [("group", pa.string()), ("before", pa.float32()), ("after", pa.float32())]
)
CHANGE_POINT_TYPE = pa.struct(
    [
        ("index", pa.int32()),
        ("timestamp", pa.int64()),
        ("score", pa.float32()),
        ("divergence", pa.float32()),
        ("rose", pa.list_(MOVED_GROUP_TYPE)),
        ("fell", pa.list_(MOVED_GROUP_TYPE)),
    ]
)
INTEREST_SCHEMA = pa.schema(
    [
        pa.field(schema.USER_ID, pa.string(), nullable=False),
        pa.field("events", pa.int32()),
        pa.field("unknown_items", pa.int32()),
        pa.field("window_starts", pa.list_(pa.int64())),
        pa.field("window_counts", pa.list_(pa.int32())),
        pa.field("profiles", pa.list_(pa.list_(pa.float32()))),  # [W][G]
        pa.field("current", pa.list_(pa.float32())),  # [G]
        pa.field("top_group", pa.string()),
        pa.field("drift", pa.float32()),
        pa.field("change_points", pa.list_(CHANGE_POINT_TYPE)),
        pa.field("forecast", pa.list_(pa.float32())),  # [G]; null without known items
        pa.field("forecast_top_group", pa.string()),
    ]
)
