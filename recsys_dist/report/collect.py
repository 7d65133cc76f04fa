"""``recsys-dist report``: gather a run's numbers and pictures into a :class:`ReportData`.

Training curves come from ``RUN/metrics.jsonl``; the ranking table from a fresh test-split
evaluation (full catalogue, against the popularity baseline); the interest-forecast table from
``RUN/interests.json`` (evaluated first when missing); trajectories and drift from analysing
every user (Ray Data), of which a sample is drawn: the users with the strongest change points
and a seeded random few, so the page shows both drift and the ordinary. The sampled users are
the analysis' own :class:`InterestRecord` rows, read back from ``interests.parquet``. Each
sampled user's top recommendations after their whole stored history come with the events
they owe their scores to (``inference/explain.py``), named by catalogue title where the
catalogue has one. The page is titled by the export's model version and the data's name
(the sources its prepared dataset was made from), never the run directory's bare name.
"""

from __future__ import annotations

import json
import posixpath
import random
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_dist import run_layout, schema, storage
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.config import Config
from recsys_dist.data.catalogue import catalogue_dir, catalogue_rows
from recsys_dist.data.prepared import load_manifest
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.evaluation.evaluate import evaluate_run
from recsys_dist.inference.explain import explain_many
from recsys_dist.inference.predictor import Recommender, model_version
from recsys_dist.interests.evaluate import evaluate_interests
from recsys_dist.interests.offline import GROUPS_FILE, INTERESTS_PARQUET, analyse_users
from recsys_dist.interests.record import InterestRecord
from recsys_dist.report.data import ReasonShown, RecommendationShown, ReportData

RECOMMENDATIONS_SHOWN = 5  # top items drawn per sampled user, each with its reasons
MAX_SOURCES_NAMED = 3  # a dataset appended to many times is "a + b + c + N more" in the title


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
        model_version=model_version(state, model_dir),
        dataset=dataset_name(prepared_dir),
        data_path=str(prepared_dir),
        run=str(run_dir),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training_curves=run_layout.read_metrics(run_dir),
        ranking_metrics=evaluate_run(run_dir, schema.TEST_SPLIT, config.eval, prepared_dir),
        interest_metrics=interest_metrics,
        groups=groups,
        users=users,
        drift_scores=drift,
        recommendations=_recommendations(
            model_dir, prepared_dir, [u.user_id for u in users], config.eval.exclude_seen
        ),
    )


def dataset_name(prepared_dir: str) -> str:
    """The data's name for the page title: the directory names of the sources it was
    prepared from (``prepare --append`` adds one each), else the prepared directory's."""
    sources = load_manifest(prepared_dir).get("sources") or []
    paths = [source.get("path", "") for source in sources if isinstance(source, dict)]
    names = list(dict.fromkeys(name for name in map(_last_part, paths) if name))
    if not names:
        return _last_part(prepared_dir) or str(prepared_dir)
    more = len(names) - MAX_SOURCES_NAMED
    return " + ".join(names[:MAX_SOURCES_NAMED]) + (f" + {more} more" if more > 0 else "")


def _last_part(path: object) -> str:
    """``s3://bucket/logs/ml-1m/`` -> ``ml-1m`` (local paths alike)."""
    return posixpath.basename(str(path).rstrip("/"))


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


def _recommendations(
    model_dir: str, prepared_dir: str, user_ids: list[str], exclude_seen: bool
) -> dict[str, list[RecommendationShown]]:
    """The users' top items after their whole stored history (what ``score`` gives them),
    each with the events it owes its score to: one small batch, scored in this process."""
    histories = _histories(prepared_dir, user_ids)
    users = [user for user in user_ids if user in histories]
    if not users:
        return {}
    recommender = Recommender(model_dir, k=RECOMMENDATIONS_SHOWN, exclude_seen=exclude_seen)
    ids, times, rated = (list(column) for column in zip(*(histories[u] for u in users)))
    found = recommender.recommend(ids, times, ratings=rated)
    reasons = explain_many(recommender, ids, times, found.item_ids, ratings=rated)
    named = {i for items in found.item_ids for i in items} | {i for row in ids for i in row}
    titles = _titles(prepared_dir, named)
    return {
        user: [
            RecommendationShown(
                item,
                titles.get(item),
                float(score),
                [ReasonShown(**asdict(r), title=titles.get(r.item_id)) for r in why[item]],
            )
            for item, score in zip(items, scores, strict=True)
        ]
        for user, items, scores, why in zip(users, found.item_ids, found.scores, reasons)
    }


def _histories(prepared_dir: str, user_ids: list[str]) -> dict[str, tuple]:
    """The users' stored histories as raw item ids, times and ratings (NaN: none, as in a
    dataset without any), one bucket file at a time."""
    vocab = Vocabulary.load(storage.join(prepared_dir, schema.VOCAB_FILE))
    wanted = pa.array(user_ids, pa.string())
    found = {}
    for path in storage.list_files(storage.join(prepared_dir, schema.USERS_DIR), ".parquet"):
        with storage.open_input(path) as handle:
            table = pq.read_table(handle)
        for row in table.filter(pc.is_in(table[schema.USER_ID], value_set=wanted)).to_pylist():
            items = vocab.to_item_ids(np.asarray(row[schema.ITEMS], np.int64)).to_pylist()
            times = np.asarray(row[schema.TIMESTAMPS], np.int64)
            rated = row.get(schema.RATINGS) or [None] * len(times)  # None: unrated
            found[row[schema.USER_ID]] = (items, times, np.asarray(rated, np.float32))
    return found


def _titles(prepared_dir: str, item_ids: set[str]) -> dict[str, str]:
    """Catalogue titles of ``item_ids`` (items without one, or no catalogue: left out)."""
    items_dir = catalogue_dir(prepared_dir)
    if not items_dir or not storage.exists(items_dir):
        return {}
    rows = catalogue_rows(items_dir, [schema.ITEM_ID, schema.TITLE])
    return {item: title for item, title in rows if title and item in item_ids}
