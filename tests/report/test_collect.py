"""``collect_report`` on the session's tiny untrained export (a copy of the run), and the page
rendered from what it collected, with each drawn user's top recommendations and the events
behind them.

The interest forecast's own evaluation is tested on the same run in
``tests/interests/test_evaluate.py``; here it is a stand-in that records how the collector
called it (a run without ``interests.json`` is evaluated first), which keeps this file to one
analysis and one ranking evaluation (Ray Data actors take seconds to start on 2 cores).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_dist import run_layout, schema
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.report import collect
from recsys_dist.report.collect import RECOMMENDATIONS_SHOWN, collect_report, dataset_name
from recsys_dist.report.data import ReportData
from recsys_dist.report.html import render_report
from tests.report.page import read_page, repr_leaks, table_problems

SAMPLE = 3
METHODS = ("forecast", "model_only", "last_window", "long_term", "decayed")
INTEREST_METRICS = {  # what evaluate_interests returns, cut to what the report reads
    "protocol": "loo split; future window = each user's last 3 events",
    "users": {"valid": 60, "test": 60},
    "methods": {
        name: {"js": 0.1 + i / 100, "top_accuracy": 0.5 - i / 100} for i, name in enumerate(METHODS)
    },
}


@pytest.fixture(scope="module")
def collected(tiny_run, tmp_path_factory):
    """``(ReportData, the run copy, the calls the interest evaluation got)``."""
    run = shutil.copytree(tiny_run.run, tmp_path_factory.mktemp("report") / "run")
    calls = []

    def evaluate_interests(*args, **kwargs):
        calls.append((args, kwargs))
        return INTEREST_METRICS

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(collect, "evaluate_interests", evaluate_interests)
        data = collect_report(str(run), tiny_run.config, str(tiny_run.prepared), sample=SAMPLE)
    return data, run, calls


def test_the_report_holds_every_part(tiny_run, collected):
    data, run, calls = collected
    state = json.loads((run / run_layout.MODEL_DIR / "state.json").read_text())
    assert data.model_version == f"{state['data_hash'][:8]}-epoch{state['metrics']['epoch']}"
    # the data is named by the source it was prepared from (the generated "raw"), not "run"
    assert data.dataset == tiny_run.raw.name == "raw"
    assert data.data_path == str(tiny_run.prepared) and data.run == str(run)
    metrics_lines = (tiny_run.run / run_layout.METRICS_FILE).read_text().splitlines()
    assert data.training_curves == [json.loads(line) for line in metrics_lines]
    ranking = data.ranking_metrics
    assert ranking["split"] == schema.TEST_SPLIT and "full-catalogue" in ranking["protocol"]
    assert all(0 <= ranking[f"ndcg@{k}"] <= 1 for k in tiny_run.config.eval.ks)
    assert "baseline_popularity" in ranking
    # the run has no interests.json, so the forecast was evaluated on the way, once
    assert not (run / run_layout.INTERESTS_FILE).exists()
    assert calls == [((str(run), str(tiny_run.prepared), tiny_run.config.interests), {})]
    assert data.interest_metrics == INTEREST_METRICS


def test_a_sample_of_users_and_every_users_drift(tiny_run, collected):
    data, *_ = collected
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR)
    assert len(data.drift_scores) == users.num_rows
    assert all(0 <= d <= 1 for d in data.drift_scores)
    assert len(data.users) == SAMPLE
    assert len({u.user_id for u in data.users}) == SAMPLE
    assert {u.user_id for u in data.users} <= set(users[schema.USER_ID].to_pylist())
    assert data.groups and all(g.startswith("cat-") for g in data.groups)
    for user in data.users:
        assert user.events > 0 and np.asarray(user.profiles).shape[1] == len(data.groups)
        assert user.forecast is not None and len(user.forecast) == len(data.groups)
    assert ReportData.from_dict(json.loads(json.dumps(data.to_dict()))) == data


def test_the_page_shows_every_section(collected):
    data, *_ = collected
    page = render_report(data)
    for section in ('id="training"', 'id="metrics"', 'id="users"', 'id="drift"'):
        assert section in page, section
    assert "Next-item ranking" in page and "Interest forecast" in page
    assert all(f"<code>{u.user_id}</code>" in page for u in data.users)
    assert page.count('<article class="user">') == SAMPLE


def test_the_page_reads_as_prose_with_aligned_figures(collected):
    """The page of a real run: titled by model version and data, the forecast's users (a
    mapping per split in ``interests.json``) as a sentence, no repr, one precision per table."""
    data, *_ = collected
    page = render_report(data)
    shown = read_page(page)
    title = f"recsys_dist report — model {data.model_version} on raw"
    assert shown.title == shown.h1 == title
    assert "Evaluated on 60 test users and 60 validation users" in page
    users = data.ranking_metrics["users"]
    assert f"Evaluated on {users:,} users of the test split." in page
    assert repr_leaks(page) == [] and table_problems(page) == []
    rated = "ratings" in data.ranking_metrics  # rated events: the rating errors' table too
    assert ("<h3>Rating prediction</h3>" in page) == rated
    assert len(shown.tables) == 3 + rated + SAMPLE  # ranking, beyond accuracy, interests


def _manifest(tmp_path, sources) -> str:
    prepared = tmp_path / "prepared-v2"
    prepared.mkdir(parents=True)
    (prepared / schema.MANIFEST_FILE).write_text(json.dumps({"sources": sources}))
    return str(prepared)


def test_the_dataset_is_named_by_its_sources(tmp_path):
    one = [{"path": "s3://bucket/logs/ml-1m/"}]
    assert dataset_name(_manifest(tmp_path / "a", one)) == "ml-1m"
    appended = [{"path": f"/data/day{i}"} for i in (1, 2, 2, 3, 4, 5)]  # day2 twice: once
    assert dataset_name(_manifest(tmp_path / "b", appended)) == "day1 + day2 + day3 + 2 more"
    assert dataset_name(_manifest(tmp_path / "c", [])) == "prepared-v2"  # none recorded


def test_each_drawn_user_gets_top_items_and_the_events_behind_them(tiny_run, collected):
    """After the whole stored history, seen items excluded (the run's eval default); items
    and events named by the generated catalogue's titles (``item-K (cat-N)`` for ``iK``)."""
    data, *_ = collected
    assert set(data.recommendations) == {u.user_id for u in data.users}
    vocab = Vocabulary.load(str(tiny_run.prepared / schema.VOCAB_FILE))
    stored = {
        u[schema.USER_ID]: u
        for u in pq.read_table(tiny_run.prepared / schema.USERS_DIR).to_pylist()
    }
    for user, items in data.recommendations.items():
        history = stored[user]
        ids = vocab.to_item_ids(np.asarray(history[schema.ITEMS])).to_pylist()
        events = set(zip(ids, history[schema.TIMESTAMPS]))
        assert 1 <= len(items) <= RECOMMENDATIONS_SHOWN
        assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
        assert not {i.item_id for i in items} & set(ids)
        for item in items:
            assert item.title.startswith(f"item-{item.item_id[1:]} (cat-")
            assert all((r.item_id, r.timestamp) in events for r in item.because)
            assert all(r.title.startswith(f"item-{r.item_id[1:]} (") for r in item.because)
    page = render_report(data)
    assert page.count('<table class="recommendations">') == SAMPLE
    assert page.count("because you …") == SAMPLE
