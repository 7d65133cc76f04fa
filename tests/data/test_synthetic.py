"""The synthetic log is canonical, reproducible, and carries the drift and order it promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, schema
from recsys_dist.data import synthetic
from recsys_dist.data.synthetic import build_catalogue, generate_dataset

SIZES = dict(users=200, items=100, categories=10, events_per_user=(20, 60), users_per_shard=64)


@pytest.fixture(scope="module")
def generated(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "a"
    return out, generate_dataset(str(out), seed=3, **SIZES)


def _events(out):
    return pq.read_table(out / schema.EVENTS_DIR)


def test_schema_counts_and_values(generated):
    out, summary = generated
    events = _events(out)
    assert events.schema == schema.EVENT_SCHEMA
    assert pq.read_table(out / schema.ITEMS_DIR).schema == schema.ITEM_SCHEMA
    assert (summary.users, summary.items, summary.shards, summary.seed) == (200, 100, 4, 3)
    assert summary.events == events.num_rows
    assert len(list((out / schema.EVENTS_DIR).glob("part-*.parquet"))) == 4
    frame = events.to_pandas()
    assert frame.groupby(schema.USER_ID).size().between(20, 60).all()
    assert frame[schema.USER_ID].nunique() == 200
    assert set(frame[schema.EVENT_TYPE]) == {"view", "click", "purchase"}
    purchases = frame[schema.EVENT_TYPE] == "purchase"
    assert frame.loc[purchases, schema.RATING].between(1, 5).all()
    assert frame.loc[~purchases, schema.RATING].isna().all()
    items = pq.read_table(out / schema.ITEMS_DIR).to_pylist()
    assert [i[schema.ITEM_ID] for i in items] == [f"i{k}" for k in range(100)]
    assert items[0][schema.TITLE] == f"item-0 ({items[0][schema.CATEGORIES][0]})"


def test_sessions_and_time_order(generated):
    frame = _events(generated[0]).to_pandas()
    gaps = frame.groupby(schema.USER_ID, sort=False)[schema.TIMESTAMP].diff().dropna()
    assert (gaps > 0).all()  # each user's events are written in time order
    assert (gaps < 600).mean() > 0.6  # mostly within sessions
    assert (gaps > 3_600).mean() > 0.1  # but sessions are hours to days apart
    starts = frame.groupby(schema.USER_ID)[schema.TIMESTAMP].min()
    assert starts.max() - starts.min() > 200 * 86_400  # users start across the year


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    out, _ = generated
    generate_dataset(str(tmp_path / "b"), seed=3, **SIZES)
    for sub in (schema.EVENTS_DIR, schema.ITEMS_DIR, synthetic.USERS_DIR):
        for part in sorted((out / sub).glob("*.parquet")):
            assert part.read_bytes() == (tmp_path / "b" / sub / part.name).read_bytes()
    generate_dataset(str(tmp_path / "c"), seed=4, **SIZES)
    assert not _events(out).equals(_events(tmp_path / "c"))


def test_drifting_users_change_dominant_category(generated):
    out, _ = generated
    catalogue = build_catalogue(100, 10, seed=3)
    kinds = pq.read_table(out / synthetic.USERS_DIR).to_pandas()
    kinds = kinds.set_index(schema.USER_ID)[synthetic.DRIFT_KIND]
    assert set(kinds.value_counts()) and kinds.value_counts().min() > 40
    frame = _events(out).to_pandas()
    frame["cat"] = catalogue.primary[frame[schema.ITEM_ID].str[1:].astype(int)]
    changed = {}
    for user, cats in frame.groupby(schema.USER_ID, sort=False)["cat"]:
        third = len(cats) // 3
        head, tail = np.bincount(cats.values[:third]), np.bincount(cats.values[-third:])
        changed[user] = head.argmax() != tail.argmax()
    rate = kinds.to_frame().assign(changed=kinds.index.map(changed)).groupby(synthetic.DRIFT_KIND)
    rate = rate["changed"].mean()
    assert rate["abrupt"] > 0.7 and rate["gradual"] > 0.7
    assert rate["stable"] < 0.35


def test_successor_relation_is_planted(generated):
    out, _ = generated
    successor = build_catalogue(100, 10, seed=3).successor
    frame = _events(out).to_pandas()
    items = frame[schema.ITEM_ID].str[1:].astype(int).to_numpy()
    same_user = frame[schema.USER_ID].to_numpy()[1:] == frame[schema.USER_ID].to_numpy()[:-1]
    hit = (successor[items[:-1]] == items[1:])[same_user].mean()
    shuffled = np.random.default_rng(0).permutation(items[1:])
    chance = (successor[items[:-1]] == shuffled)[same_user].mean()
    assert hit > 0.4 and hit > 5 * chance


def test_catalogue_sampling_follows_categories_and_popularity():
    catalogue = build_catalogue(1000, 7, seed=1)
    assert np.bincount(catalogue.primary).min() >= 1000 // 7
    cats = np.full(20_000, 2)
    drawn = catalogue.sample(cats, np.random.default_rng(0).random(len(cats)))
    assert (catalogue.primary[drawn] == 2).all()
    counts = np.sort(np.bincount(drawn, minlength=1000)[catalogue.primary == 2])[::-1]
    assert counts[0] > 10 * counts[len(counts) // 2]  # Zipf-like head
    assert (catalogue.primary[catalogue.successor] == catalogue.primary).all()


def test_rejects_bad_arguments_and_existing_output(generated):
    out, _ = generated
    with pytest.raises(ValueError, match="categories"):
        generate_dataset(str(out.parent / "x"), items=5, categories=10)
    with pytest.raises(ValueError, match="events_per_user"):
        generate_dataset(str(out.parent / "x"), events_per_user=(5, 2))
    with pytest.raises(FileExistsError):
        generate_dataset(str(out), seed=3, **SIZES)


def test_ground_truth_records_when_and_where_interest_shifted(generated):
    """Abrupt users' events before ``shift_event`` come from ``from_categories`` and after it
    from ``to_categories`` (up to the planted noise), at ``shift_start``."""
    out, _ = generated
    catalogue = build_catalogue(100, 10, seed=3)
    truth = pq.read_table(out / synthetic.USERS_DIR).to_pandas().set_index(schema.USER_ID)
    frame = _events(out).to_pandas()
    frame["cat"] = "cat-" + pd.Series(
        catalogue.primary[frame[schema.ITEM_ID].str[1:].astype(int)], index=frame.index
    ).astype(str)
    stable = truth[truth[synthetic.DRIFT_KIND] == "stable"]
    assert (
        stable[synthetic.SHIFT_START].isna().all() and stable[synthetic.TO_CATEGORIES].isna().all()
    )
    before_in, after_in, checked = [], [], 0
    for user, events in frame.groupby(schema.USER_ID, sort=False):
        row = truth.loc[user]
        if row[synthetic.DRIFT_KIND] != "abrupt":
            continue
        at = int(row[synthetic.SHIFT_EVENT])
        assert (
            events[schema.TIMESTAMP].iloc[at]
            == row[synthetic.SHIFT_START]
            == row[synthetic.SHIFT_END]
        )
        before_in.append(events["cat"].iloc[:at].isin(row[synthetic.FROM_CATEGORIES]).mean())
        after_in.append(events["cat"].iloc[at:].isin(row[synthetic.TO_CATEGORIES]).mean())
        checked += 1
    assert checked > 40
    # Events follow the preference set but for noise (15%) and successor chains (which stay in
    # the category of the chain's first item, drawn before the switch for a few events).
    assert np.mean(before_in) > 0.75 and np.mean(after_in) > 0.7
    gradual = truth[truth[synthetic.DRIFT_KIND] == "gradual"]
    assert (gradual[synthetic.SHIFT_END] > gradual[synthetic.SHIFT_START]).all()
    assert gradual[synthetic.SHIFT_EVENT].isna().all()


def test_drift_paths_make_where_interests_go_predictable(generated, tmp_path):
    """With ``drift_paths=1`` a drifting user's new main category is one of the common paths
    out of the old one (unless that clashes with the user's other categories); by default it
    is anywhere, so only by chance one of them."""

    def on_path_rate(out) -> float:
        paths = build_catalogue(100, 10, seed=3).paths
        truth = pq.read_table(out / synthetic.USERS_DIR).to_pandas()
        moved = truth[truth[synthetic.DRIFT_KIND] != "stable"]
        first = [
            (int(a[0][4:]), int(b[0][4:]))
            for a, b in zip(
                moved[synthetic.FROM_CATEGORIES], moved[synthetic.TO_CATEGORIES], strict=True
            )
        ]
        return float(np.mean([b in paths[a] for a, b in first]))

    generate_dataset(str(tmp_path / "paths"), seed=3, drift_paths=1.0, **SIZES)
    assert on_path_rate(tmp_path / "paths") > 0.8
    assert on_path_rate(generated[0]) < 0.4
    with pytest.raises(ValueError, match="drift_paths"):
        generate_dataset(str(tmp_path / "bad"), drift_paths=1.5)


def test_a_long_break_comes_before_each_return_and_every_abrupt_shift(generated, tmp_path):
    """With ``break_days`` every user's gap before ``break_event`` is that long or longer and
    every other gap shorter; an abrupt user's new interest starts right after the break."""
    out = tmp_path / "breaks"
    argv = ["generate", "--output", str(out), "--num-users", "200", "--num-items", "100"]
    argv += ["--seed", "3"]
    assert cli.main([*argv, "--break-days", "20"]) == 0
    truth = pq.read_table(out / synthetic.USERS_DIR).to_pandas().set_index(schema.USER_ID)
    assert truth[synthetic.BREAK_EVENT].notna().all()
    abrupt = truth[truth[synthetic.DRIFT_KIND] == "abrupt"]
    assert (abrupt[synthetic.SHIFT_EVENT] == abrupt[synthetic.BREAK_EVENT]).all()
    day = 86_400
    for user, events in _events(out).to_pandas().groupby(schema.USER_ID, sort=False):
        gaps = np.diff(events[schema.TIMESTAMP].to_numpy())
        at = int(truth.loc[user, synthetic.BREAK_EVENT])
        assert 20 * day <= gaps[at - 1] <= 40 * day + 1, user
        assert (np.delete(gaps, at - 1) < 20 * day).all(), user
        if user in abrupt.index:
            assert events[schema.TIMESTAMP].iloc[at] == abrupt.loc[user, synthetic.SHIFT_START]
    assert (
        pq.read_table(generated[0] / synthetic.USERS_DIR).column(synthetic.BREAK_EVENT).null_count
        == SIZES["users"]
    )
    with pytest.raises(ValueError, match="break_days"):
        generate_dataset(str(tmp_path / "bad"), break_days=-1.0)
