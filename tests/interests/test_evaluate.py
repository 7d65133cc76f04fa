"""Which events are history and which the held-out future, per split protocol."""

from __future__ import annotations

import numpy as np

from recsys_dist import schema
from recsys_dist.config import InterestConfig
from recsys_dist.data.sequences import SplitSpec
from recsys_dist.interests.evaluate import candidates, future_split

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
