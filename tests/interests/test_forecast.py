"""The interest analysis of single users, on the session's tiny untrained export: profiles
and forecasts are distributions, drift a bounded divergence, and a run without a fitted
calibration uses the default one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.config import InterestConfig
from recsys_dist.interests.forecast import DEFAULT_HALF_LIFE, Calibration, InterestAnalyzer
from recsys_dist.interests.profiles import decayed_profile

USERS = 8


@pytest.fixture(scope="module")
def analyzer(tiny_run) -> InterestAnalyzer:
    return InterestAnalyzer.for_run(str(tiny_run.run), str(tiny_run.prepared), InterestConfig())


@pytest.fixture(scope="module")
def users(tiny_run, analyzer):
    """``USERS`` prepared users in the model's item indices: ids, histories, times."""
    table = pq.read_table(tiny_run.prepared / schema.USERS_DIR).slice(0, USERS)
    to_model = analyzer.events_of(str(tiny_run.prepared))
    known = [
        to_model(items, times)
        for items, times in zip(table[schema.ITEMS].to_pylist(), table[schema.TIMESTAMPS])
    ]
    assert all(dropped == 0 for *_, dropped in known)  # same data, same vocabulary
    ids = table[schema.USER_ID].to_pylist()
    return ids, [k[0] for k in known], [k[1] for k in known]


def test_the_catalogue_categories_are_the_groups(analyzer):
    assert len(analyzer.groups.names) == 4  # generated with 4 categories
    assert all(name.startswith("cat-") for name in analyzer.groups.names)


def test_every_record_is_made_of_distributions(analyzer, users):
    ids, histories, times = users
    records = analyzer.analyse(ids, histories, times)
    groups = len(analyzer.groups.names)
    assert [r.user_id for r in records] == ids
    for record, history in zip(records, histories):
        assert record.events == len(history) == sum(record.window_counts)
        assert record.unknown_items == 0
        profiles = np.asarray(record.profiles)
        assert profiles.shape == (len(record.window_starts), groups)
        np.testing.assert_allclose(profiles.sum(axis=1), 1, atol=1e-6)
        assert record.window_starts == sorted(record.window_starts)
        assert abs(sum(record.current) - 1) < 1e-6 and record.top_group in analyzer.groups.names
        assert len(record.forecast) == groups and abs(sum(record.forecast) - 1) < 1e-6
        assert min(record.forecast) >= 0
        assert record.forecast_top_group == analyzer.groups.names[int(np.argmax(record.forecast))]
        assert 0 <= record.drift <= 1  # JS divergence in bits
        assert all(0 < p.index < record.events for p in record.change_points)


def test_a_user_without_known_items_gets_no_forecast(analyzer, users):
    ids, histories, times = users
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    records = analyzer.analyse(
        [ids[0], "nobody"], [histories[0], empty[0]], [times[0], empty[1]], unknown_items=[0, 5]
    )
    assert records[0].forecast is not None  # the other row is still forecast
    nobody = records[1]
    assert nobody.forecast is None and nobody.forecast_top_group is None
    assert nobody.top_group is None and nobody.events == 0 and nobody.unknown_items == 5
    assert nobody.change_points == [] and nobody.drift == 0


def test_the_forecast_blends_the_model_with_the_decayed_profile(analyzer, users):
    _, histories, times = users
    queries = [int(t[-1]) for t in times]
    model = analyzer.forecast(histories, times, queries, Calibration(blend=1.0, half_life=5.0))
    decayed = analyzer.forecast(histories, times, queries, Calibration(blend=0.0, half_life=5.0))
    half = analyzer.forecast(histories, times, queries, Calibration(blend=0.5, half_life=5.0))
    expected = [decayed_profile(analyzer.groups.of_events(h), 5.0) for h in histories]
    np.testing.assert_allclose(decayed, expected)
    np.testing.assert_allclose(half, 0.5 * model + 0.5 * decayed)
    np.testing.assert_allclose(model.sum(axis=1), 1, atol=1e-6)
    again = analyzer.forecast(histories, times, queries, Calibration(blend=1.0, half_life=5.0))
    np.testing.assert_array_equal(model, again)  # the untrained export is deterministic


def test_a_run_without_interests_json_has_the_default_calibration(tiny_run, tmp_path):
    assert not (tiny_run.run / run_layout.INTERESTS_FILE).exists()
    assert Calibration.of_run(str(tiny_run.run), InterestConfig()) == Calibration()
    assert Calibration() == Calibration(1.0, DEFAULT_HALF_LIFE, 1.0)
    explicit = InterestConfig(blend=0.25, half_life=7.0)
    assert Calibration.of_run(str(tiny_run.run), explicit) == Calibration(0.25, 7.0, 1.0)
    run = shutil.copytree(tiny_run.run, tmp_path / "run")  # writes go to a copy
    fitted = Calibration(blend=0.6, half_life=20.0, temperature=0.5)
    (run / run_layout.INTERESTS_FILE).write_text(json.dumps({"calibration": fitted.to_dict()}))
    assert Calibration.of_run(str(run), InterestConfig()) == fitted
    assert Calibration.of_run(str(run), explicit) == Calibration(0.25, 7.0, 0.5)
