"""The one interest record: its Arrow schema agrees with it, and a record survives Parquet and
JSON unchanged (interests.parquet, the HTTP answer and the report all hold this shape)."""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist.interests.drift import ChangePoint
from recsys_dist.interests.profiles import Trajectory
from recsys_dist.interests.record import (
    CHANGE_POINT_TYPE,
    INTEREST_SCHEMA,
    MOVED_GROUP_TYPE,
    ChangePointRecord,
    InterestRecord,
    MovedGroup,
    from_analysis,
)

NAMES = ["comedy", "drama", "action"]


def analysed(forecast: bool = True) -> InterestRecord:
    """A user whose comedy windows turn to drama; shares exact in float32."""
    path = Trajectory(
        starts=np.array([100, 200, 300], np.int64),
        counts=np.array([4, 4, 2], np.int64),
        profiles=np.array([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.5, 0.5]]),
        first_event=np.array([0, 4, 8], np.int64),
    )
    point = ChangePoint(4, 200, 2.5, 0.5, rose=[(1, 0.25, 0.75)], fell=[(0, 0.75, 0.25)])
    return from_analysis(
        "u1",
        path,
        current=np.array([0.0, 0.5, 0.5]),
        drift=0.25,
        points=[point],
        forecast=np.array([0.125, 0.625, 0.25]) if forecast else None,
        names=NAMES,
        unknown_items=3,
    )


def test_the_arrow_schema_has_the_records_fields_in_their_order():
    def names_of(arrow_type) -> list[str]:
        return [arrow_type.field(i).name for i in range(arrow_type.num_fields)]

    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    assert INTEREST_SCHEMA.names == field_names(InterestRecord)
    assert names_of(CHANGE_POINT_TYPE) == field_names(ChangePointRecord)
    assert names_of(MOVED_GROUP_TYPE) == field_names(MovedGroup)
    nested = INTEREST_SCHEMA.field("change_points").type.value_type
    assert nested == CHANGE_POINT_TYPE
    assert CHANGE_POINT_TYPE.field("rose").type.value_type == MOVED_GROUP_TYPE


def test_nullable_fields_are_the_optional_ones():
    hints = typing.get_type_hints(InterestRecord)
    optional = {name for name, hint in hints.items() if type(None) in typing.get_args(hint)}
    assert optional == {"top_group", "forecast", "forecast_top_group"}
    assert not INTEREST_SCHEMA.field("user_id").nullable


def test_the_analysis_becomes_plain_values_with_group_names():
    record = analysed()
    assert record.events == 10 and record.unknown_items == 3
    assert record.top_group == "drama" and record.forecast_top_group == "drama"
    assert record.change_points == [
        ChangePointRecord(
            4, 200, 2.5, 0.5, [MovedGroup("drama", 0.25, 0.75)], [MovedGroup("comedy", 0.75, 0.25)]
        )
    ]
    assert json.loads(json.dumps(record.to_row())) == record.to_row()  # JSON-ready
    none = analysed(forecast=False)
    assert none.forecast is None and none.forecast_top_group is None


@pytest.mark.parametrize("forecast", [True, False])
def test_a_record_survives_parquet_and_json(tmp_path, forecast):
    record = analysed(forecast)
    pq.write_table(pa.Table.from_pylist([record.to_row()], schema=INTEREST_SCHEMA), tmp_path / "i")
    (row,) = pq.read_table(tmp_path / "i").to_pylist()
    assert InterestRecord.from_row(row) == record
    assert InterestRecord.from_row(json.loads(json.dumps(record.to_row()))) == record


def test_stale_rows_fail_loudly():
    row = analysed().to_row()
    with pytest.raises(ValueError, match="unknown keys \\['trend'\\]"):
        InterestRecord.from_row({**row, "trend": 1})
    del row["change_points"][0]["rose"][0]["after"]
    with pytest.raises(ValueError, match="MovedGroup: unknown keys \\[\\], missing keys"):
        InterestRecord.from_row(row)
