"""prepare: validation errors, skip counts, de-duplication, ordering, splits without leakage."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema
from recsys_dist.config import DataConfig
from recsys_dist.data import prepared as prepared_data
from recsys_dist.data.prepare import prepare_dataset
from recsys_dist.data.prepared import load_manifest
from recsys_dist.data.vocab import Vocabulary


def write_events(directory, rows, name="part-0.parquet", table=None):
    events = directory / schema.EVENTS_DIR
    events.mkdir(parents=True, exist_ok=True)
    table = table if table is not None else pa.Table.from_pylist(rows)
    pq.write_table(table, events / name)
    return directory


def read_split(prepared, split) -> pd.DataFrame:
    """A split's rows as training and evaluation read them, or (``users``) the stored users."""
    if split == schema.USERS_DIR:
        return pq.read_table(prepared / schema.USERS_DIR).to_pandas()
    return prepared_data.read_split(str(prepared), split).to_pandas()


def user_log(user, items, start=1000, step=10):
    return [
        {"user_id": user, "item_id": item, "timestamp": start + i * step}
        for i, item in enumerate(items)
    ]


@pytest.fixture
def small_log(tmp_path):
    rows = user_log("a", ["x", "y", "z", "w", "v"]) + user_log("b", [1, 2, 3], start=5000)
    rows = [{**r, "item_id": str(r["item_id"])} for r in rows]
    return write_events(tmp_path / "raw", rows)


def test_a_fine_tuning_turn_reads_the_training_rows_of_the_recent_users(ray_session, tmp_path):
    """``active_since`` keeps the users with later events (b, from 5000), and the replayed
    share of the others (a, up to 1040): none of them at 0, all at 1; valid is not cut."""
    rows = user_log("a", ["x", "y", "z", "w", "v"]) + user_log("b", list("xyzwv"), start=5000)
    prepare_dataset(str(write_events(tmp_path / "raw", rows)), str(tmp_path / "p"), DataConfig())
    prepared = str(tmp_path / "p")

    def train_users(replay):
        rows = prepared_data.read_split(prepared, "train", active_since=3000, replay=replay)
        return {row["user_id"] for row in rows.iter_rows()}

    assert train_users(0.0) == {"b"}
    assert train_users(1.0) == {"a", "b"}
    assert set(read_split(tmp_path / "p", "valid")["user_id"]) == {"a", "b"}


def test_leave_one_out_never_shows_the_future(ray_session, small_log, tmp_path):
    manifest = prepare_dataset(str(small_log), str(tmp_path / "p"), DataConfig())
    vocab = Vocabulary.load(str(tmp_path / "p" / schema.VOCAB_FILE))
    ids = lambda idx: list(vocab.to_item_ids(np.asarray(idx)).to_pylist())  # noqa: E731
    test = read_split(tmp_path / "p", "test").set_index("user_id")
    valid = read_split(tmp_path / "p", "valid").set_index("user_id")
    train = read_split(tmp_path / "p", "train")
    assert ids([test.loc["a", "target_item"]]) == ["v"]
    assert ids(test.loc["a", "items"]) == ["x", "y", "z", "w"]
    assert ids([valid.loc["a", "target_item"]]) == ["w"]
    assert ids(valid.loc["a", "items"]) == ["x", "y", "z"]
    assert ids(train[train.user_id == "a"].iloc[0]["items"]) == ["x", "y", "z"]
    for frame in (test, valid):
        assert all(max(t) < tt for t, tt in zip(frame.timestamps, frame.target_timestamp))
    assert manifest["counts"]["users"] == 2 and manifest["vocab_size"] == 8 + 2
    assert manifest["counts"]["test_rows"] == 2
    assert manifest["ratings"] is None  # no event carries a rating: no rating head
    assert schema.RATINGS not in test.columns


def test_ratings_are_kept_per_event_and_their_scale_recorded(ray_session, tmp_path):
    rows = user_log("a", ["x", "y", "z", "w"]) + user_log("b", ["x", "y", "v"], start=5000)
    ratings = [4.0, None, 2.0, 5.0, 1.0, 3.0, 4.5]
    raw = write_events(tmp_path / "raw", [{**r, "rating": v} for r, v in zip(rows, ratings)])
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    assert manifest["ratings"] == {"events": 6, "min": 1.0, "max": 5.0, "mean": 19.5 / 6}
    test = read_split(tmp_path / "p", "test").set_index("user_id")
    history = np.asarray(test.loc["a", schema.RATINGS])
    assert list(history[[0, 2]]) == [4.0, 2.0] and np.isnan(history[1])  # NaN: unrated
    assert test.loc["a", schema.TARGET_RATING] == 5.0 and test.loc["b", schema.TARGET_RATING] == 4.5


def test_leave_n_out_holds_out_a_window_per_user(ray_session, tmp_path):
    """``holdout_events=2``: the last 2 events are the test future, the 2 before the
    validation future; rows target each future's first event; training sees neither."""
    items = [f"i{k}" for k in range(7)]
    raw = write_events(tmp_path / "raw", user_log("a", items) + user_log("b", items[:4]))
    prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(holdout_events=2))
    vocab = Vocabulary.load(str(tmp_path / "p" / schema.VOCAB_FILE))
    ids = lambda idx: list(vocab.to_item_ids(np.asarray(idx)).to_pylist())  # noqa: E731
    test = read_split(tmp_path / "p", "test").set_index("user_id")
    valid = read_split(tmp_path / "p", "valid").set_index("user_id")
    train = read_split(tmp_path / "p", "train")
    assert ids(test.loc["a", "items"]) == items[:5]
    assert ids([test.loc["a", "target_item"]]) == ["i5"]
    assert ids(valid.loc["a", "items"]) == items[:3]
    assert ids([valid.loc["a", "target_item"]]) == ["i3"]
    assert ids(train[train.user_id == "a"].iloc[0]["items"]) == items[:3]
    # b (4 events): a test row, but no validation row or training window is left
    assert ids(test.loc["b", "items"]) == items[:2] and "b" not in valid.index
    assert "b" not in set(train.user_id)
    assert load_manifest(str(tmp_path / "p"))["config"]["holdout_events"] == 2


def test_splits_are_cut_as_read_and_counted_in_the_manifest(ray_session, tmp_path):
    """Only users are stored; the rows read back are the rows the manifest counts."""
    rows = []
    for u in range(40):
        rows += user_log(f"u{u}", [f"i{(u * k) % 30}" for k in range(3 + u % 17)], start=u)
    raw = write_events(tmp_path / "raw", rows)
    for split in ("loo", "time"):
        out = tmp_path / split
        config = DataConfig(split=split, max_len=5, window_stride=2)
        manifest = prepare_dataset(str(raw), str(out), config)
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "users", "vocab.parquet"]
        for name in schema.SPLITS:
            assert len(read_split(out, name)) == manifest["counts"][f"{name}_rows"] > 0


def test_time_split_cuts_are_global_and_leak_free(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        times = np.sort(rng.integers(0, 100_000, size=20))
        rows += [
            {"user_id": f"u{u}", "item_id": f"i{rng.integers(50)}", "timestamp": int(t)}
            for t in times
        ]
    raw = write_events(tmp_path / "raw", rows)
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(split="time"))
    valid_cut, test_cut = manifest["valid_cut"], manifest["test_cut"]
    assert 0 < valid_cut < test_cut <= 100_000
    train = read_split(tmp_path / "p", "train")
    assert max(max(t) for t in train.timestamps) < valid_cut
    valid = read_split(tmp_path / "p", "valid")
    assert all(valid_cut <= t < test_cut for t in valid.target_timestamp)
    assert all(max(h) < valid_cut for h in valid.timestamps)
    test = read_split(tmp_path / "p", "test")
    assert all(t >= test_cut for t in test.target_timestamp)
    assert all(max(h) < test_cut for h in test.timestamps)
    share_after_test = sum(1 for r in rows if r["timestamp"] >= test_cut) / len(rows)
    assert share_after_test == pytest.approx(0.1, abs=0.03)


def test_duplicates_dropped_and_ties_keep_log_order(ray_session, tmp_path):
    rows = [
        {"user_id": "a", "item_id": "b", "timestamp": 5},
        {"user_id": "a", "item_id": "a", "timestamp": 5},  # same time: log order b, a
        {"user_id": "a", "item_id": "b", "timestamp": 5},  # exact duplicate of row 1
        {"user_id": "a", "item_id": "c", "timestamp": 1},
        {"user_id": "a", "item_id": "d", "timestamp": 9},
    ]
    raw = write_events(tmp_path / "raw", rows)
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    users = read_split(tmp_path / "p", "users")
    vocab = Vocabulary.load(str(tmp_path / "p" / schema.VOCAB_FILE))
    assert vocab.to_item_ids(users.iloc[0]["items"]).to_pylist() == ["c", "b", "a", "d"]
    assert manifest["counts"]["duplicates_dropped"] == 1
    assert manifest["counts"]["events"] == 4 and manifest["counts"]["events_accepted"] == 5


def test_bad_row_error_names_file_row_and_field(ray_session, tmp_path):
    rows = user_log("a", ["x", "y", "z"])
    table = pa.table(
        {
            "user_id": ["a", "a", "a"],
            "item_id": ["x", None, "z"],
            "timestamp": [1, 2, 3],
        }
    )
    raw = write_events(tmp_path / "raw", rows, name="bad.parquet", table=table)
    with pytest.raises(Exception) as info:
        prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    message = str(info.value)
    assert "bad.parquet row 2: field 'item_id'" in message
    from recsys_dist.cli import user_error

    assert "bad.parquet row 2: field 'item_id'" in user_error(info.value)


def test_skip_mode_counts_every_skipped_row(ray_session, tmp_path):
    good = user_log("a", ["x", "y", "z", "w"])
    table = pa.table(
        {
            "user_id": ["a", "b", None, "b", "b"],
            "item_id": ["q", "x", "y", "z", "w"],
            "timestamp": ["7", "nope", "3", "4", "5"],  # strings: castable or not
            "rating": [1.0, 2.0, float("nan"), 4.0, 5.0],
        }
    )
    raw = write_events(tmp_path / "raw", good)
    write_events(tmp_path / "raw", None, name="mixed.parquet", table=table)
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(on_bad_rows="skip"))
    # row 2: bad timestamp; row 3: null user (and NaN rating): 2 rows skipped, 3 kept.
    assert manifest["counts"]["bad_rows_skipped"] == 2
    assert manifest["counts"]["events_accepted"] == len(good) + 3
    assert any("mixed.parquet" in path for path in manifest["bad_rows"]["per_file"])
    assert any("row 2: field 'timestamp'" in e for e in manifest["bad_rows"]["examples"])


def _corrupt_copies(raw, rows: int) -> tuple[str, str]:
    """Beside a good file: one cut short (no footer) and one whose compressed pages are
    overwritten in the middle (the footer reads, the data does not)."""
    events = raw / schema.EVENTS_DIR
    whole = pa.Table.from_pylist(user_log("c", [f"i{k}" for k in range(rows)]))
    pq.write_table(whole, events / "c-whole.parquet", row_group_size=rows // 2)
    data = (events / "c-whole.parquet").read_bytes()
    (events / "c-whole.parquet").unlink()
    (events / "b-truncated.parquet").write_bytes(data[:-100])
    middle = bytearray(data)
    middle[len(data) // 3 : len(data) // 3 + 64] = b"\xab" * 64
    (events / "d-corrupt.parquet").write_bytes(bytes(middle))
    return str(events / "b-truncated.parquet"), str(events / "d-corrupt.parquet")


def test_an_unreadable_file_is_named_or_skipped_counted_and_taken_once_whole(ray_session, tmp_path):
    from recsys_dist.cli import user_error

    raw = write_events(tmp_path / "raw", user_log("a", ["x", "y", "z", "w"]))
    truncated, corrupt = _corrupt_copies(raw, rows=400)
    with pytest.raises(Exception) as info:
        prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    assert user_error(info.value).startswith(f"{truncated}: not a readable Parquet file")
    os.rename(truncated, truncated + ".aside")
    with pytest.raises(Exception) as info:  # the footer reads, a page does not
        prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    assert user_error(info.value).startswith(f"{corrupt}: unreadable Parquet after row 0")
    os.rename(truncated + ".aside", truncated)

    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(on_bad_rows="skip"))
    assert manifest["bad_rows"]["unreadable_files"] == [truncated]
    assert manifest["counts"]["files_skipped"] == 1
    assert manifest["counts"]["bad_rows_skipped"] == 400  # every row of the corrupt file
    assert manifest["bad_rows"]["per_file"][corrupt] == 400
    assert manifest["counts"]["events_accepted"] == 4
    assert truncated not in manifest["input_files"]  # not taken: it may come back whole

    os.remove(truncated)  # the upload, redone whole
    write_events(raw, user_log("b", ["x", "y", "z"]), name="b-truncated.parquet")
    again = prepare_dataset(
        str(raw), str(tmp_path / "p"), DataConfig(on_bad_rows="skip"), append=True
    )
    assert again["taken"] == {"files": 1, "already_taken": 2}
    assert again["counts"]["files_skipped"] == 0
    assert again["counts"]["events_accepted"] == 4 + 3


def test_missing_required_column_is_named(ray_session, tmp_path):
    raw = write_events(tmp_path / "raw", [{"user_id": "a", "item_id": "x"}])
    with pytest.raises(Exception, match="missing required field.*timestamp"):
        prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())


def test_windows_and_min_events(ray_session, tmp_path):
    rows = user_log("long", [f"i{k}" for k in range(25)]) + user_log("short", ["a", "b"])
    raw = write_events(tmp_path / "raw", rows)
    config = DataConfig(max_len=10, window_stride=5, min_user_events=3, max_history=100)
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), config)
    train = read_split(tmp_path / "p", "train")
    assert set(train.user_id) == {"long"}
    assert sorted(len(x) for x in train["items"]) == [10, 10, 10]  # 23 train events: stops 23,18,13
    assert manifest["counts"]["users_below_min_events"] == 1
    assert load_manifest(str(tmp_path / "p"))["data_hash"] == manifest["data_hash"]


def test_ml100k_prepares_like_the_papers(ray_session, ml100k_dir, tmp_path):
    from recsys_dist.data.importers import import_dataset

    import_dataset("recbole", str(ml100k_dir), str(tmp_path / "raw"))
    manifest = prepare_dataset(str(tmp_path / "raw"), str(tmp_path / "p"), DataConfig())
    assert manifest["counts"]["users"] == 943 and manifest["num_items"] == 1682
    assert manifest["counts"]["test_rows"] == 943
    assert manifest["ratings"]["events"] == 100_000
    assert (manifest["ratings"]["min"], manifest["ratings"]["max"]) == (1.0, 5.0)


def test_preparing_again_replaces_the_earlier_output(ray_session, small_log, tmp_path):
    first = prepare_dataset(str(small_log), str(tmp_path / "p"), DataConfig())
    again = prepare_dataset(str(small_log), str(tmp_path / "p"), DataConfig())
    assert again["counts"] == first["counts"]
    assert again["data_hash"] == first["data_hash"]  # the same input, the same fingerprint
    assert len(read_split(tmp_path / "p", "test")) == first["counts"]["test_rows"]
    assert len(read_split(tmp_path / "p", "users")) == 2


def random_log(directory, users, days, seed=0, name="part-0.parquet"):
    """A log over ``days`` days with new users and new items appearing every day."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in days:
        for _ in range(300):
            user = int(rng.integers(users + 5 * day))
            rows.append(
                {
                    "user_id": f"u{user}",
                    "item_id": f"i{int(rng.integers(20 + 10 * day))}",
                    "timestamp": day * 86_400 + int(rng.integers(86_400)),
                }
            )
    return write_events(directory, rows, name=name)


def as_id_sequences(prepared) -> dict[str, dict]:
    """Every split with item indices mapped back to raw ids, keyed by (split, user, first time)."""
    vocab = Vocabulary.load(str(prepared / schema.VOCAB_FILE))
    out = {}
    for split in schema.SPLITS:
        for row in read_split(prepared, split).itertuples():
            ids = vocab.to_item_ids(np.asarray(row.items)).to_pylist()
            out[(split, row.user_id, int(row.timestamps[0]), len(ids))] = ids
    return out


def test_many_buckets_give_the_same_dataset(ray_session, tmp_path):
    raw = random_log(tmp_path / "raw", users=40, days=range(3))
    few = prepare_dataset(str(raw), str(tmp_path / "few"), DataConfig(bucket_rows=10**9))
    many = prepare_dataset(str(raw), str(tmp_path / "many"), DataConfig(bucket_rows=50))
    # 900 events in buckets of at most ~50, in whole rounds of the session's 4 CPUs: 5 rounds
    assert many["num_buckets"] == 20 and few["num_buckets"] == 4
    assert many["counts"] == few["counts"]
    assert as_id_sequences(tmp_path / "many") == as_id_sequences(tmp_path / "few")


def test_appending_partitions_equals_preparing_everything(ray_session, tmp_path):
    """New days are appended without reading the old ones (they are moved away first); the
    result equals one prepare of all days, and old item indices never change."""
    old = random_log(tmp_path / "log" / "date=1", users=30, days=range(3), seed=1)
    new = random_log(tmp_path / "log" / "date=2", users=30, days=range(3, 5), seed=2)
    config = DataConfig(min_user_events=2)
    first = prepare_dataset(str(old), str(tmp_path / "inc"), config)
    old_vocab = Vocabulary.load(str(tmp_path / "inc" / schema.VOCAB_FILE))
    (tmp_path / "log" / "date=1").rename(tmp_path / "away")
    appended = prepare_dataset(str(new), str(tmp_path / "inc"), config, append=True)
    (tmp_path / "away").rename(tmp_path / "log" / "date=1")
    whole = prepare_dataset(str(tmp_path / "log"), str(tmp_path / "whole"), config)

    assert appended["counts"] == whole["counts"]
    assert appended["counts"]["events_accepted"] > first["counts"]["events_accepted"]
    assert as_id_sequences(tmp_path / "inc") == as_id_sequences(tmp_path / "whole")
    vocab = Vocabulary.load(str(tmp_path / "inc" / schema.VOCAB_FILE))
    assert vocab.item_ids[: old_vocab.num_items].equals(old_vocab.item_ids)
    assert vocab.num_items == whole["num_items"] > old_vocab.num_items
    assert [s["files"] for s in appended["sources"]] == [1, 1]
    assert appended["files"] == 2 and appended["data_hash"] != first["data_hash"]


def test_append_over_a_growing_folder_takes_each_file_once(ray_session, tmp_path):
    """The service's event log keeps writing into one folder: every append takes exactly the
    files not taken before, and equals one prepare of everything."""
    log_dir, config = tmp_path / "log", DataConfig(min_user_events=2)
    random_log(log_dir, users=30, days=range(2), seed=1, name="part-1.parquet")
    first = prepare_dataset(str(log_dir), str(tmp_path / "inc"), config)
    assert first["taken"] == {"files": 1, "already_taken": 0}
    same = prepare_dataset(str(log_dir), str(tmp_path / "inc"), config, append=True)
    assert same["taken"] == {"files": 0, "already_taken": 1}
    assert load_manifest(tmp_path / "inc") == first  # nothing written
    random_log(log_dir, users=30, days=range(2, 4), seed=2, name="part-2.parquet")
    grown = prepare_dataset(str(log_dir), str(tmp_path / "inc"), config, append=True)
    assert grown["taken"] == {"files": 1, "already_taken": 1}
    assert sorted(grown["consumed"]) == grown["input_files"] == sorted(grown["input_files"])
    whole = prepare_dataset(str(log_dir), str(tmp_path / "whole"), config)
    assert grown["counts"] == whole["counts"]
    assert as_id_sequences(tmp_path / "inc") == as_id_sequences(tmp_path / "whole")
    touched = log_dir / schema.EVENTS_DIR / "part-1.parquet"
    os.utime(touched, ns=(0, 10**18))  # copied or synced again: same footer, another mtime
    assert prepare_dataset(str(log_dir), str(tmp_path / "inc"), config, append=True)["taken"] == {
        "files": 0,
        "already_taken": 2,
    }


def test_append_refuses_a_rewritten_file_and_changed_settings(ray_session, tmp_path):
    from recsys_dist.data.prepare import AppendError

    raw = random_log(tmp_path / "raw", users=10, days=range(2))
    prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig())
    random_log(tmp_path / "raw", users=12, days=range(3), seed=5)  # the same file, rewritten
    with pytest.raises(AppendError, match="has changed since"):
        prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(), append=True)
    more = random_log(tmp_path / "more", users=10, days=range(2, 3))
    with pytest.raises(AppendError, match="data.max_len: 50 → 20"):
        prepare_dataset(str(more), str(tmp_path / "p"), DataConfig(max_len=20), append=True)


def test_skewed_users_are_cut_and_reported(ray_session, tmp_path):
    bot = user_log("bot", [f"i{k % 7}" for k in range(500)], step=1)
    raw = write_events(tmp_path / "raw", bot + user_log("a", ["x", "y", "z"]))
    manifest = prepare_dataset(str(raw), str(tmp_path / "p"), DataConfig(max_history=100))
    assert manifest["skewed_users"] == [{"user_id": "bot", "events": 500, "truncated": 400}]
    assert manifest["counts"]["events_truncated"] == 400
    assert manifest["counts"]["events_accepted"] == 503
    users = read_split(tmp_path / "p", "users").set_index("user_id")
    assert list(users.loc["bot", "timestamps"]) == list(range(1400, 1500))
