"""Each input format becomes the same canonical events/items layout; bad input names its spot."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema
from recsys_dist.data import importers
from recsys_dist.data.importers import DataFormatError, import_dataset


def _events(out: Path) -> list[tuple]:
    table = pq.read_table(out / schema.EVENTS_DIR)
    assert table.schema == schema.EVENT_SCHEMA
    cols = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.EVENT_TYPE, schema.RATING]
    return list(zip(*(table.column(c).to_pylist() for c in cols), strict=True))


def _items(out: Path) -> dict[str, tuple]:
    table = pq.read_table(out / schema.ITEMS_DIR)
    assert table.schema == schema.ITEM_SCHEMA
    return {r[schema.ITEM_ID]: (r[schema.TITLE], r[schema.CATEGORIES]) for r in table.to_pylist()}


def _write(path: Path, text: str, encoding: str = "utf8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_recbole_inter_and_item(tmp_path):
    src = tmp_path / "src"
    _write(
        src / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t100.7\n2\t11\t3.5\t200\n",
    )
    _write(
        src / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n11\tHeat\t1995\tAction\n",
    )
    summary = import_dataset("recbole", str(src), str(tmp_path / "out"))
    assert (summary.events, summary.items, summary.files_written) == (2, 2, 2)
    assert _events(tmp_path / "out") == [("1", "10", 100, None, 4.0), ("2", "11", 200, None, 3.5)]
    assert _items(tmp_path / "out") == {
        "10": ("Toy Story", ["Animation", "Comedy"]),
        "11": ("Heat", ["Action"]),
    }


def test_movielens_100k_layout(tmp_path):
    src = tmp_path / "ml"
    _write(src / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    _write(
        src / "u.item",
        "242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags) + "\n",
        "latin-1",
    )
    import_dataset("movielens", str(src), str(tmp_path / "out"))
    assert _events(tmp_path / "out") == [
        ("196", "242", 881250949, None, 3.0),
        ("186", "302", 891717742, None, 3.0),
    ]
    assert _items(tmp_path / "out") == {"242": ("Kolya (1996)", ["Animation", "Comedy"])}


def test_movielens_1m_layout(tmp_path):
    src = tmp_path / "ml"
    _write(src / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    _write(src / "movies.dat", "1193::Café: One (1975)::Drama|Comedy\n", "latin-1")
    import_dataset("movielens", str(src), str(tmp_path / "out"))
    assert _events(tmp_path / "out") == [
        ("1", "1193", 978300760, None, 5.0),
        ("1", "661", 978302109, None, 3.0),
    ]
    assert _items(tmp_path / "out") == {"1193": ("Café: One (1975)", ["Drama", "Comedy"])}


def test_sasrec_positions_keep_order(tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BLOCK_BYTES", 8)  # several blocks: counters carry over
    src = _write(tmp_path / "seq.txt", "1 5\n1 7\n2 5\n1 9\n2 3\n")
    import_dataset("sasrec", str(src), str(tmp_path / "out"))
    rows = [(u, i, t) for u, i, t, _, _ in _events(tmp_path / "out")]
    assert rows == [("1", "5", 0), ("1", "7", 1), ("2", "5", 0), ("1", "9", 2), ("2", "3", 1)]


def test_csv_column_map_ms_and_extras(tmp_path):
    src = _write(
        tmp_path / "log.csv",
        "uid;movie;ts;event_type;stars;extra\nu1;m1;1500;click;;x\nu2;m2;2999;;4;y\n\n",
    )
    column_map = {"user_id": "uid", "item_id": "movie", "timestamp": "ts", "rating": "stars"}
    summary = import_dataset(
        "csv", str(src), str(tmp_path / "out"), column_map, delimiter=";", timestamp_unit="ms"
    )
    assert summary.events == 2
    assert _events(tmp_path / "out") == [("u1", "m1", 1, "click", None), ("u2", "m2", 2, None, 4.0)]


def test_csv_iso_timestamps(tmp_path):
    src = _write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp\n"
        "a,x,2020-01-01T00:00:00Z\nb,y,2020-01-01 01:00:00\nc,z,2020-01-01T03:00:00+02:00\n",
    )
    import_dataset("csv", str(src), str(tmp_path / "out"))
    base = int(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    times = [t for _, _, t, _, _ in _events(tmp_path / "out")]
    assert times == [base, base + 3600, base + 3600]


def test_csv_directory_of_files(tmp_path):
    _write(tmp_path / "in" / "a.csv", "user_id,item_id,timestamp\n1,2,3\n")
    _write(tmp_path / "in" / "b.csv", "item_id,user_id,timestamp\n5,4,6\n")
    import_dataset("csv", str(tmp_path / "in"), str(tmp_path / "out"))
    assert _events(tmp_path / "out") == [("1", "2", 3, None, None), ("4", "5", 6, None, None)]


def test_parquet_with_timestamp_type_and_float_ids(tmp_path):
    when = dt.datetime(2021, 5, 1, tzinfo=dt.timezone.utc)
    table = pa.table(
        {
            "user": pa.array([1.0, 2.0]),
            "item_id": pa.array([7, 8], pa.int32()),
            "timestamp": pa.array([when, when], pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    import_dataset(
        "parquet", str(tmp_path / "in.parquet"), str(tmp_path / "out"), {"user_id": "user"}
    )
    secs = int(when.timestamp())
    assert _events(tmp_path / "out") == [("1", "7", secs, None, None), ("2", "8", secs, None, None)]


def test_bad_number_names_file_line_and_field(tmp_path):
    body = "".join(f"u{i},i{i},{i}\n" for i in range(15)) + "u,i,abc\n"
    src = _write(tmp_path / "ratings.csv", "user_id,item_id,timestamp\n" + body)
    with pytest.raises(DataFormatError) as err:
        import_dataset("csv", str(src), str(tmp_path / "out"))
    message = str(err.value)
    assert "ratings.csv line 17" in message and "'timestamp'" in message and "'abc'" in message
    assert not list((tmp_path / "out").glob("events/*.parquet"))  # nothing half-written


def test_bad_rating_in_parquet_names_row(tmp_path):
    table = pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, 2]})
    pq.write_table(table.append_column("rating", pa.array(["4", "five"])), tmp_path / "e.parquet")
    with pytest.raises(DataFormatError, match=r"e\.parquet row 2: field 'rating'.*'five'"):
        import_dataset("parquet", str(tmp_path / "e.parquet"), str(tmp_path / "out"))


def test_missing_value_and_missing_column(tmp_path):
    src = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\n1,2,3\n,5,6\n")
    with pytest.raises(DataFormatError, match=r"a\.csv line 3: field 'user_id': missing value"):
        import_dataset("csv", str(src), str(tmp_path / "out"))
    src = _write(tmp_path / "b.csv", "user_id,item,timestamp\n1,2,3\n")
    with pytest.raises(
        DataFormatError, match=r"b\.csv.*'item_id'.*\['user_id', 'item', 'timestamp'\]"
    ):
        import_dataset("csv", str(src), str(tmp_path / "out"))


def test_ragged_line_is_located(tmp_path):
    src = _write(tmp_path / "seq.txt", "1 2\n1 3\n1 4 5\n")
    with pytest.raises(DataFormatError, match=r"seq\.txt line 3"):
        import_dataset("sasrec", str(src), str(tmp_path / "out"))


def test_unknown_format_and_existing_output(tmp_path):
    with pytest.raises(ValueError, match="recbole.*movielens.*sasrec.*csv.*parquet"):
        import_dataset("xml", str(tmp_path), str(tmp_path / "out"))
    src = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\n1,2,3\n")
    import_dataset("csv", str(src), str(tmp_path / "out"))
    with pytest.raises(FileExistsError):
        import_dataset("csv", str(src), str(tmp_path / "out"))
    assert import_dataset("csv", str(src), str(tmp_path / "out"), overwrite=True).events == 1


def test_output_is_split_into_bounded_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "ROWS_PER_FILE", 4)
    monkeypatch.setattr(importers, "ROW_GROUP_SIZE", 3)
    body = "".join(f"u{i},i{i},{i}\n" for i in range(10))
    src = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\n" + body)
    summary = import_dataset("csv", str(src), str(tmp_path / "out"))
    parts = sorted((tmp_path / "out" / schema.EVENTS_DIR).glob("part-*.parquet"))
    assert summary.files_written == len(parts) == 3
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [4, 4, 2]
    assert [t for _, _, t, _, _ in _events(tmp_path / "out")] == list(range(10))


@pytest.mark.dataset
def test_ml100k_recbole(tmp_path, ml100k_dir):
    summary = import_dataset("recbole", str(ml100k_dir), str(tmp_path / "out"))
    assert (summary.events, summary.items) == (100_000, 1682)
    events = pq.read_table(tmp_path / "out" / schema.EVENTS_DIR)
    assert len(set(events.column(schema.USER_ID).to_pylist())) == 943
    assert len(set(events.column(schema.ITEM_ID).to_pylist())) == 1682
    items = _items(tmp_path / "out")
    assert items["1"] == ("Toy Story", ["Animation", "Children's", "Comedy"])
    assert all(title and cats for title, cats in items.values())
