"""``recsys-dist report``: gather a run's numbers and pictures into a :class:`ReportData`.

Training curves come from ``RUN/metrics.jsonl``; the ranking table from a fresh test-split
evaluation (full catalogue, against the popularity baseline); the interest-forecast table from
``RUN/interests.json`` (evaluated first when missing); trajectories and drift from analysing
every user (Ray Data), of which a sample is drawn: the users with the strongest change points
and a seeded random few, so the page shows both drift and the ordinary. The sampled users are
the analysis' own :class:`InterestRecord` rows, read back from ``interests.parquet``.
"""

from __future__ import annotations

import json
import random
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from recsys_dist import run_layout, schema, storage
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.config import Config
from recsys_dist.evaluation.evaluate import evaluate_run
from recsys_dist.inference.predictor import model_version
from recsys_dist.interests.evaluate import evaluate_interests
from recsys_dist.interests.offline import GROUPS_FILE, INTERESTS_PARQUET, analyse_users
from recsys_dist.interests.record import InterestRecord
from recsys_dist.report.data import ReportData


def collect_report(
    run_dir: str, config: Config, prepared_dir: str | None = None, sample: int = 6
) -> ReportData:
    """Everything the report shows for ``run_dir`` (``sample`` users drawn in detail)."""
    prepared_dir = prepared_dir or run_layout.prepared_dir_of(run_dir)
    model_dir = run_layout.model_dir(run_dir)
    state = storage.read_json(storage.join(model_dir, STATE_FILE))
    interest_metrics = _interest_metrics(run_dir, prepared_dir, config)
    with tempfile.TemporaryDirectory(prefix="recsys-report-") as scratch:
        analyse_users(run_dir, prepared_dir, scratch, config.interests)
        groups, users, drift = _users(Path(scratch), sample, config.interests.seed)
    return ReportData(
        title=Path(str(run_dir).rstrip("/")).name or str(run_dir),
        model_version=model_version(state, model_dir),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_curves=run_layout.read_metrics(run_dir),
        ranking_metrics=evaluate_run(run_dir, schema.TEST_SPLIT, config.eval, prepared_dir),
        interest_metrics=interest_metrics,
        groups=groups,
        users=users,
        drift_scores=drift,
    )


def _interest_metrics(run_dir: str, prepared_dir: str, config: Config) -> dict:
    path = run_layout.interests_file(run_dir)
    if storage.exists(path):
        return storage.read_json(path)
    return evaluate_interests(run_dir, prepared_dir, config.interests)


def _users(
    analysed: Path, sample: int, seed: int
) -> tuple[list[str], list[InterestRecord], list[float]]:
    """The interest groups, the sampled users' records, and every user's drift score."""
    groups = json.loads((analysed / GROUPS_FILE).read_text())["groups"]
    table = pq.read_table(analysed / INTERESTS_PARQUET)
    drift = [float(d) for d in table.column("drift").to_pylist()]
    drawable = [i for i, n in enumerate(table.column("events").to_pylist()) if n]
    strongest = sorted(
        drawable,
        key=lambda i: -max((p["score"] for p in table["change_points"][i].as_py()), default=0),
    )[: sample // 2]
    rest = sorted(set(drawable) - set(strongest))
    picked = strongest + random.Random(seed).sample(rest, min(sample - len(strongest), len(rest)))
    users = [InterestRecord.from_row(table.slice(i, 1).to_pylist()[0]) for i in picked]
    return groups, users, drift
