"""events: streaming validation keeps every row's place in its file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from recsys_dist.data import events


def test_order_is_the_row_number_in_the_file_across_batches(ray_session, tmp_path, monkeypatch):
    """Ties in time are broken by log order, so a row's order must not restart per batch."""
    monkeypatch.setattr(events, "READ_BATCH_ROWS", 3)
    path = tmp_path / "part-0.parquet"
    table = pa.table(
        {
            "user_id": ["a"] * 8,
            "item_id": ["i0", "i1", None, "i3", "i4", "i5", "i6", "i7"],  # row 3 is bad
            "timestamp": [5] * 8,
        }
    )
    pq.write_table(table, path, row_group_size=3)
    tally = events.BadRowTally.remote()
    batches = list(events.validated_batches(str(path), 7, "skip", tally))
    order = np.concatenate([b.column(events.ORDER).to_numpy() for b in batches])
    rows = order - (7 << 40)
    assert rows.tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert [b.column("item_id")[0].as_py() for b in batches] == ["i0", "i3", "i6"]
    assert ray.get(tally.get.remote()).counts == {str(path): 1}
