"""bench/cold_start.py's hold-out: a held-out item survives only as its user's last event."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_dist import schema
from tests.bench.scripts import load_bench


def test_held_out_items_are_only_last_events(tmp_path):
    bench = load_bench("cold_start")
    source = tmp_path / "source"
    (source / schema.EVENTS_DIR).mkdir(parents=True)
    (source / schema.ITEMS_DIR).mkdir()
    # b's last two events tie in time: file order decides which is last, as in prepare.
    events = pa.table(
        {
            schema.USER_ID: ["a", "a", "a", "b", "b", "b", "b"],
            schema.ITEM_ID: ["x", "h", "y", "h", "x", "y", "h2"],
            schema.TIMESTAMP: np.array([1, 2, 3, 1, 2, 5, 5], np.int64),
        }
    )
    pq.write_table(events, source / schema.EVENTS_DIR / "part-0.parquet")
    pq.write_table(pa.table({schema.ITEM_ID: ["x"]}), source / schema.ITEMS_DIR / "i.parquet")

    class Fixed:  # the "random" draw: h and h2
        def choice(self, items, size, replace):
            assert size == 2 and not replace
            return np.array(["h", "h2"])

    held = bench.hold_out(source, tmp_path / "out", 0.5, Fixed())
    assert held == ["h", "h2"]
    written = pq.read_table(tmp_path / "out" / schema.EVENTS_DIR).to_pydict()
    pairs = list(zip(written[schema.USER_ID], written[schema.ITEM_ID], strict=True))
    assert pairs == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("b", "h2")]
    assert (tmp_path / "out" / schema.ITEMS_DIR / "i.parquet").exists()
