"""``recsys-dist report``: gather a run's numbers and pictures into a :class:`ReportData`.

Training curves come from ``RUN/metrics.jsonl``; the ranking table from a fresh test-split
evaluation (full catalogue, against the popularity baseline); the interest-forecast table from
``RUN/interests.json`` (evaluated first when missing); trajectories and drift from analysing
every user (Ray Data), of which a sample is drawn: the users with the strongest change points
and a seeded random few, so the page shows both drift and the ordinary.
"""

from __future__ import annotations

import json
import random
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from recsys_dist import schema, storage
from recsys_dist.checkpoint import MODEL_DIR, STATE_FILE
from recsys_dist.config import Config
from recsys_dist.evaluation.evaluate import evaluate_run, prepared_dir_of
from recsys_dist.inference.predictor import model_version
from recsys_dist.interests.evaluate import evaluate_interests
from recsys_dist.interests.forecast import INTERESTS_FILE
from recsys_dist.interests.offline import GROUPS_FILE, INTERESTS_PARQUET, analyse_users
from recsys_dist.report.data import ReportData, UserInterests

METRICS_FILE = "metrics.jsonl"


def collect_report(
    run_dir: str, config: Config, prepared_dir: str | None = None, sample: int = 6
) -> ReportData:
    """Everything the report shows for ``run_dir`` (``sample`` users drawn in detail)."""
    prepared_dir = prepared_dir or prepared_dir_of(run_dir)
    model_dir = storage.join(run_dir, MODEL_DIR)
    state = storage.read_json(storage.join(model_dir, STATE_FILE))
    interest_metrics = _interest_metrics(run_dir, prepared_dir, config)
    with tempfile.TemporaryDirectory(prefix="recsys-report-") as scratch:
        analyse_users(run_dir, prepared_dir, scratch, config.interests)
        users, drift = _users(Path(scratch), sample, config.interests.seed)
    return ReportData(
        title=Path(str(run_dir).rstrip("/")).name or str(run_dir),
        model_version=model_version(state, model_dir),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_curves=_training_curves(run_dir),
        ranking_metrics=evaluate_run(run_dir, schema.TEST_SPLIT, config.eval, prepared_dir),
        interest_metrics=interest_metrics,
        users=users,
        drift_scores=drift,
    )


def _training_curves(run_dir: str) -> list[dict]:
    path = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def _interest_metrics(run_dir: str, prepared_dir: str, config: Config) -> dict:
    path = storage.join(run_dir, INTERESTS_FILE)
    if storage.exists(path):
        return storage.read_json(path)
    return evaluate_interests(run_dir, prepared_dir, config.interests)


def _users(analysed: Path, sample: int, seed: int) -> tuple[list[UserInterests], list[float]]:
    """The sampled users' trajectories, and every user's drift score."""
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
    return [_user(table.slice(i, 1).to_pylist()[0], groups) for i in picked], drift


def _user(row: dict, groups: list[str]) -> UserInterests:
    def moves(listed):
        return [[m["group"], m["before"], m["after"]] for m in listed]

    return UserInterests(
        user_id=row[schema.USER_ID],
        groups=groups,
        window_starts=row["window_starts"],
        window_counts=row["window_counts"],
        profiles=row["profiles"],
        change_points=[
            {**p, "rose": moves(p["rose"]), "fell": moves(p["fell"])} for p in row["change_points"]
        ],
        forecast=row["forecast"],
        drift=float(row["drift"]),
    )
