"""Which events are history and which the held-out future, per split protocol."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq

from recsys_dist import run_layout, schema
from recsys_dist.config import InterestConfig
from recsys_dist.data.sequences import SplitSpec
from recsys_dist.interests.evaluate import (
    BLENDS,
    HALF_LIVES,
    TEMPERATURES,
    candidates,
    evaluate_interests,
    future_split,
)
from recsys_dist.interests.forecast import Calibration

TIMES = np.arange(0, 300, 10)  # 30 events at t = 0, 10, ..., 290
ITEMS = np.arange(2, 32)


def test_time_split_futures_start_at_the_cuts_and_stop_at_the_window():
    spec = SplitSpec(
        "time", max_len=50, window_stride=10, min_user_events=1, valid_cut=100, test_cut=250
    )
    config = InterestConfig(future_events=10, min_future_events=3)
    # valid: history before t=100 (10 events); future t=100..240, capped at 10 events
    assert future_split(ITEMS, TIMES, spec, schema.VALID_SPLIT, config) == (10, 20, 100)
    # test: history before t=250 (25 events); future t=250..290 (5 events)
    assert future_split(ITEMS, TIMES, spec, schema.TEST_SPLIT, config) == (25, 30, 250)
    late = SplitSpec("time", 50, 10, 1, valid_cut=100, test_cut=280)  # 2 future events only
    assert future_split(ITEMS, TIMES, late, schema.TEST_SPLIT, config) is None
    early = SplitSpec("time", 50, 10, 1, valid_cut=0, test_cut=250)  # no history
    assert future_split(ITEMS, TIMES, early, schema.VALID_SPLIT, config) is None


def test_leave_one_out_futures_are_the_held_out_events():
    spec = SplitSpec("loo", max_len=50, window_stride=10, min_user_events=3)
    config = InterestConfig()
    assert future_split(ITEMS, TIMES, spec, schema.VALID_SPLIT, config) == (28, 29, 280)
    assert future_split(ITEMS, TIMES, spec, schema.TEST_SPLIT, config) == (29, 30, 290)
    assert future_split(ITEMS[:1], TIMES[:1], spec, schema.TEST_SPLIT, config) is None
    window = SplitSpec("loo", 50, 10, 3, holdout_events=5)  # leave-5-out: a window per user
    assert future_split(ITEMS, TIMES, window, schema.VALID_SPLIT, config) == (20, 25, 200)
    assert future_split(ITEMS, TIMES, window, schema.TEST_SPLIT, config) == (25, 30, 250)


def test_every_baseline_and_blend_is_a_candidate():
    names = candidates()
    assert {"last_window", "long_term"} <= set(names)
    assert any(n.startswith("decayed:") for n in names)
    assert "blend:1.0:2.0:1.0" in names and "blend:0.0:50.0:2.0" in names  # model, decay alone


def test_the_untrained_export_is_evaluated_against_every_baseline(tiny_run, tmp_path):
    """The whole evaluation on the session's tiny run (a copy: it writes interests.json)."""
    run = shutil.copytree(tiny_run.run, tmp_path / "run")
    config = InterestConfig()
    result = evaluate_interests(str(run), str(tiny_run.prepared), config)
    methods = result["methods"]
    assert set(methods) == {"forecast", "model_only", "last_window", "long_term", "decayed"}
    assert set(result["validation"]) == set(methods)
    for scores in (*methods.values(), *result["validation"].values()):
        assert set(scores) == {"js", "top_accuracy"}
        assert 0 <= scores["js"] <= 1 and 0 <= scores["top_accuracy"] <= 1, scores
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).num_rows  # 20+ events each:
    assert result["users"] == {"valid": users, "test": users}  # every one has both futures
    fitted = result["calibration"]
    assert fitted["blend"] in BLENDS and fitted["half_life"] in HALF_LIVES
    assert fitted["temperature"] in TEMPERATURES and result["decay_half_life"] in HALF_LIVES
    assert set(result["forecast_minus_baseline"]) == {"last_window", "long_term", "decayed"}
    for baseline, differences in result["forecast_minus_baseline"].items():
        for metric in ("js", "top_accuracy"):  # paired differences agree with the means
            low, mean, high = differences[metric]
            gap = methods["forecast"][metric] - methods[baseline][metric]
            assert low <= mean <= high and abs(mean - gap) < 1e-9, (baseline, metric)
    assert "held out of training" in result["protocol"]  # leave-3-out: a window per user
    saved = json.loads((run / run_layout.INTERESTS_FILE).read_text())
    assert saved == json.loads(json.dumps(result))
    assert Calibration.of_run(str(run), config) == Calibration(**fitted)
    assert not (tiny_run.run / run_layout.INTERESTS_FILE).exists()
