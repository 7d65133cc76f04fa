"""What ``train`` refuses before any training starts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout
from recsys_dist.config import Config
from recsys_dist.errors import OutputExistsError
from recsys_dist.train.trainer import train


def test_overwrite_never_deletes_served_events_inside_the_run(tmp_path):
    """Services before the event log moved beside the run wrote it inside: --overwrite
    refuses to delete acknowledged events, and leaves everything where it was."""
    run = tmp_path / "run"
    events = run / run_layout.EVENT_LOG_DIR / "events"
    events.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["u"]}), events / "part-1.parquet")
    with pytest.raises(OutputExistsError, match="would delete the served events"):
        train(str(tmp_path / "prepared"), str(run), Config(), overwrite=True)
    assert (events / "part-1.parquet").exists()
