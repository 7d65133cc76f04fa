"""``recsys-dist interests``: every (or some) user's interests, computed with Ray Data.

Writes ``OUT/interests.parquet`` (one :class:`InterestRecord` per row: trajectory, current
profile, drift score, change points, forecast) and ``OUT/groups.json`` (the interest groups,
in the column order of every profile). Users stream through a pool of
:class:`InterestAnalyzer` actors, so memory does not grow with the number of users.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recsys_dist import schema, storage
from recsys_dist.config import InterestConfig
from recsys_dist.data.prepared import read_users
from recsys_dist.interests.forecast import InterestAnalyzer
from recsys_dist.interests.record import INTEREST_SCHEMA

logger = logging.getLogger(__name__)

INTERESTS_PARQUET = "interests.parquet"  # OUT/: one InterestRecord per row
GROUPS_FILE = "groups.json"  # OUT/: {"groups": [...]}, the column order of every profile
GROUPS_METADATA = b"recsys_dist.groups"  # the group names, on every table the actors return


@dataclass
class InterestsSummary:
    output: str
    users: int
    groups: int
    users_with_change_points: int
    mean_drift: float
    seconds: float


class InterestRows:
    """Ray Data callable: a batch of prepared users → rows of ``INTEREST_SCHEMA``."""

    def __init__(self, run_dir: str, prepared_dir: str, config: InterestConfig) -> None:
        self.analyzer = InterestAnalyzer.for_run(run_dir, prepared_dir, config)
        self.to_model = self.analyzer.events_of(prepared_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        histories, times, unknown = [], [], []
        for items, stamps in zip(batch[schema.ITEMS], batch[schema.TIMESTAMPS], strict=True):
            known, at, dropped = self.to_model(items, stamps)
            histories.append(known)
            times.append(at)
            unknown.append(dropped)
        users = [str(u) for u in batch[schema.USER_ID]]
        found = self.analyzer.analyse(users, histories, times, unknown)
        names = self.analyzer.groups.names
        return pa.Table.from_pylist(
            [record.to_row() for record in found],
            schema=INTEREST_SCHEMA.with_metadata({GROUPS_METADATA: json.dumps(names)}),
        )


def analyse_users(
    run_dir: str,
    prepared_dir: str,
    output: str,
    config: InterestConfig,
    users: Sequence[str] | None = None,
    active_since: int | None = None,
) -> InterestsSummary:
    """Interests of every user of ``prepared_dir`` (or only ``users``, or only those whose
    last event is later than ``active_since``, in seconds) → ``output``/."""
    started = time.perf_counter()
    dataset = read_users(prepared_dir)
    if users is not None:
        wanted = pa.array(sorted(set(users)), pa.string())
        dataset = dataset.map_batches(_only, batch_format="pyarrow", fn_kwargs={"wanted": wanted})
    if active_since is not None:
        dataset = dataset.map_batches(
            _active_since, batch_format="pyarrow", fn_kwargs={"since": active_since}
        )
    rows = dataset.map_batches(
        InterestRows,
        fn_constructor_args=(run_dir, prepared_dir, config),
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    storage.make_dirs(output)
    summary = InterestsSummary(output, 0, 0, 0, 0.0, 0.0)
    drift_sum = 0.0
    groups = None
    with (
        storage.open_output(storage.join(output, INTERESTS_PARQUET)) as sink,
        pq.ParquetWriter(sink, INTEREST_SCHEMA) as writer,
    ):
        for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
            groups = json.loads(table.schema.metadata[GROUPS_METADATA])
            writer.write_table(table.cast(INTEREST_SCHEMA))
            summary.users += table.num_rows
            points = pc.list_value_length(table.column("change_points")).to_numpy(False)
            summary.users_with_change_points += int((points > 0).sum())
            drift_sum += float(np.sum(table.column("drift").to_numpy(False)))
    if groups is None:  # no user selected: the actors never ran, so name the groups here
        groups = InterestAnalyzer.for_run(run_dir, prepared_dir, config).groups.names
    storage.write_json(storage.join(output, GROUPS_FILE), {"groups": list(groups)})
    summary.groups = len(groups)
    summary.mean_drift = round(drift_sum / max(summary.users, 1), 4)
    summary.seconds = round(time.perf_counter() - started, 2)
    if users is not None and summary.users < len(set(users)):
        missing = len(set(users)) - summary.users
        logger.warning("%d of the requested users are not in %s", missing, prepared_dir)
    return summary


def _only(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column(schema.USER_ID), value_set=wanted))


def _active_since(batch: pa.Table, since: int) -> pa.Table:
    """The users whose newest event (the last of their time-ordered sequence) is after
    ``since``."""
    times = batch.column(schema.TIMESTAMPS).combine_chunks()
    ends = np.asarray(times.offsets)[1:] - 1  # into .values; prepared sequences are never empty
    return batch.filter(pc.greater(times.values.take(pa.array(ends)), since))
