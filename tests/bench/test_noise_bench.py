"""bench/noise.py's injection: noise lands in the training part only, the share asked for."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_dist import schema
from tests.bench.scripts import load_bench


def test_noise_is_the_share_asked_and_never_among_the_held_out_events(tmp_path):
    bench = load_bench("noise")
    users = np.repeat(["a", "b"], [22, 12])
    events = pa.table(
        {
            schema.USER_ID: users,
            schema.ITEM_ID: [f"i{n}" for n in range(34)],
            schema.TIMESTAMP: np.r_[np.arange(22) * 100, np.arange(12) * 50].astype(np.int64),
        }
    )
    added = bench.write_noisy(events, 0.5, tmp_path, np.random.default_rng(0))
    assert added == 10 + 5  # half of each user's 20 and 10 training events
    written = pq.read_table(tmp_path / schema.EVENTS_DIR).to_pandas()
    assert len(written) == 34 + added
    for user, group in written.groupby(schema.USER_ID):
        original = events.filter(pa.compute.equal(events[schema.USER_ID], user)).to_pandas()
        held_out = original[schema.TIMESTAMP].to_numpy()[-2]
        noise = group[~group[schema.ITEM_ID].isin(original[schema.ITEM_ID])]
        assert (noise[schema.TIMESTAMP] < held_out).all()  # the last two stay the last two


def test_popularity_noise_lands_where_the_log_does(tmp_path):
    bench = load_bench("noise")
    users = np.repeat([f"u{n}" for n in range(50)], 42)
    items = np.where(np.arange(len(users)) % 42 < 40, "hit", "rare")  # 95 % of events on "hit"
    events = pa.table(
        {
            schema.USER_ID: users,
            schema.ITEM_ID: items,
            schema.TIMESTAMP: np.tile(np.arange(42) * 10, 50).astype(np.int64),
        }
    )
    rng = np.random.default_rng(0)
    added = bench.write_noisy(events, 0.5, tmp_path, rng, draw="popularity")
    written = pq.read_table(tmp_path / schema.EVENTS_DIR).to_pandas()
    noise = written.iloc[len(users) :]
    assert added == len(noise) == 50 * 20
    assert 0.9 < (noise[schema.ITEM_ID] == "hit").mean() < 0.99  # uniform would give ~0.5
