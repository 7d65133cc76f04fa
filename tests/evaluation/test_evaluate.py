"""``evaluate_run`` on the session's tiny untrained export: the metrics it reports, how many
users they cover, the baseline beside them, and the protocol line that says how they were
measured."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from recsys_dist import schema
from recsys_dist.config import EvalConfig
from recsys_dist.data.prepared import read_split
from recsys_dist.errors import UserInputError
from recsys_dist.evaluation.evaluate import evaluate_run

KS = (5, 10, 20)
METRICS = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in KS]


@pytest.fixture(scope="module")
def test_metrics(tiny_run) -> dict:
    return evaluate_run(str(tiny_run.run), schema.TEST_SPLIT)


def check_metrics(metrics: dict) -> None:
    assert set(METRICS) <= set(metrics)
    assert all(0 <= metrics[name] <= 1 for name in METRICS), metrics
    hits = [metrics[f"hr@{k}"] for k in KS]
    assert hits == sorted(hits)  # a longer list holds every hit of a shorter one
    for k in KS:
        assert metrics[f"mrr@{k}"] <= metrics[f"ndcg@{k}"] <= metrics[f"hr@{k}"]


def test_full_ranking_metrics_of_the_model_and_the_baseline(tiny_run, test_metrics):
    assert test_metrics["split"] == schema.TEST_SPLIT
    assert test_metrics["protocol"] == "full-catalogue ranking, seen items excluded"
    check_metrics(test_metrics)
    check_metrics(test_metrics["baseline_popularity"])
    assert set(test_metrics["baseline_popularity"]) == {*METRICS, "beyond_accuracy"}


def test_beyond_accuracy_side_by_side_with_the_popularity_baseline(tiny_run, test_metrics):
    """Top-10 lists of every test user: the popularity lists lean to the popular items; the
    untrained model's spread wider (on 40 items, with long histories excluded, both may
    still cover every item). How evenly exposure falls is not compared: an untrained model
    scores each item by its nearness to the user's own history, which may concentrate
    exposure as much as popularity does. The generated catalogue has categories, so
    diversity is measured."""
    model = test_metrics["beyond_accuracy"]
    popular = test_metrics["baseline_popularity"]["beyond_accuracy"]
    for figures in (model, popular):
        assert figures["k"] == 10
        assert 0 < figures["coverage"] <= 1 and 0 <= figures["exposure_gini"] < 1
        assert 0 <= figures["popularity_percentile"] <= 100 and figures["novelty"] > 0
        assert 0 <= figures["intra_list_diversity"] <= 1
    assert popular["popularity_percentile"] > model["popularity_percentile"]
    assert popular["coverage"] <= model["coverage"]
    assert popular["novelty"] < model["novelty"]


def test_every_user_with_a_test_target_counts_once(tiny_run, test_metrics):
    """Leave-3-out: a user has a test target if events are left before their last 3."""
    lengths = pq.read_table(tiny_run.prepared / schema.USERS_DIR)[schema.ITEMS].to_pylist()
    data = tiny_run.config.data
    expected = sum(len(x) >= data.min_user_events and len(x) > data.holdout_events for x in lengths)
    assert test_metrics["users"] == expected == len(lengths) > 0


def test_keeping_seen_items_changes_the_protocol(tiny_run, test_metrics):
    kept = evaluate_run(str(tiny_run.run), schema.TEST_SPLIT, EvalConfig(exclude_seen=False))
    assert kept["protocol"] == "full-catalogue ranking, seen items kept"
    assert kept["users"] == test_metrics["users"]
    check_metrics(kept)
    assert kept["baseline_popularity"] != test_metrics["baseline_popularity"]


def test_a_window_ranks_only_the_held_out_events_after_its_start(tiny_run, test_metrics):
    """``eval.targets_after``: the users whose test event is later than the median one."""
    times = sorted(
        read_split(str(tiny_run.prepared), schema.TEST_SPLIT).to_pandas()[schema.TARGET_TIMESTAMP]
    )
    since = int(times[len(times) // 2])
    newest = evaluate_run(str(tiny_run.run), schema.TEST_SPLIT, EvalConfig(targets_after=since))
    assert newest["users"] == sum(t > since for t in times) < test_metrics["users"]
    assert newest["protocol"].startswith("full-catalogue ranking, seen items excluded, held-out")
    check_metrics(newest)


def test_a_sampled_protocol_says_so(tiny_run):
    """3 negatives: some users have seen all but a handful of the 40 items (see the report)."""
    sampled = evaluate_run(
        str(tiny_run.run), schema.VALID_SPLIT, EvalConfig(sampled_negatives=3, ks=KS)
    )
    assert sampled["split"] == schema.VALID_SPLIT
    assert sampled["protocol"].startswith("SAMPLED ranking against 3 uniform negatives")
    check_metrics(sampled)
    assert sampled["hr@5"] == 1.0  # 3 negatives + the target: every target is in the top 5


def test_a_bad_split_is_the_users_error(tiny_run):
    with pytest.raises(UserInputError, match="--split"):
        evaluate_run(str(tiny_run.run), "train")
