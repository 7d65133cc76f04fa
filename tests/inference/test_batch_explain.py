"""``recommend --explain`` in batch, on the session's tiny untrained export: the ``because``
column holds what :func:`explain` says for the same history (one implementation, online and
in batch), the recommendations are those of a run without it, and without it the output
schema is unchanged."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, run_layout, schema
from recsys_dist.inference.batch import (
    BECAUSE,
    EXPLAINED_SCHEMA,
    RECOMMENDATION_SCHEMA,
    ExplainingRecommender,
    recommend_histories,
)
from recsys_dist.inference.explain import BECAUSE_TYPE, TOP_REASONS, explain
from recsys_dist.inference.predictor import Recommender

K = 3


@pytest.fixture(scope="module")
def outputs(tiny_run, tmp_path_factory) -> dict[bool, pa.Table]:
    """The tiny run's raw events recommended for, without and with ``explain``."""
    root = tmp_path_factory.mktemp("batch-explain")
    model, events = run_layout.model_dir(tiny_run.run), str(tiny_run.raw / schema.EVENTS_DIR)
    tables = {}
    for explained in (False, True):
        out = str(root / f"explain-{explained}.parquet")
        recommend_histories(model, events, out, K, data=tiny_run.config.data, explain=explained)
        tables[explained] = pq.read_table(out)
    return tables


def test_without_explain_the_schema_is_unchanged_and_explain_only_adds_a_column(outputs):
    assert outputs[False].schema == RECOMMENDATION_SCHEMA
    assert outputs[True].schema == EXPLAINED_SCHEMA
    order = [(schema.USER_ID, "ascending"), ("rank", "ascending")]
    explained, plain = outputs[True].sort_by(order), outputs[False].sort_by(order)
    for column in (schema.USER_ID, "rank", schema.ITEM_ID):
        assert explained[column].equals(plain[column])
    np.testing.assert_allclose(explained["score"], plain["score"], rtol=1e-5)


def test_each_rows_reasons_are_what_explain_gives_for_that_history(tiny_run, outputs):
    """Stored users hold the histories ``recommend`` grouped with the run's data settings.

    The untrained model's score drops are tiny (some 1e-6), so the batch (other users beside,
    one thread in a Ray actor) and a lone call differ in the last float bits: weights are
    compared within 1e-5, and the order only where it is not a near tie."""
    recommender = Recommender(run_layout.model_dir(tiny_run.run), k=K)
    users = pq.read_table(tiny_run.prepared / schema.USERS_DIR).to_pylist()
    rows = outputs[True].to_pylist()
    assert len(rows) == K * len(users)
    history = {
        u[schema.USER_ID]: (
            recommender.vocab.to_item_ids(np.asarray(u[schema.ITEMS])).to_pylist(),
            u[schema.TIMESTAMPS],
            u[schema.RATINGS],  # the tiny model reads them, in batch as in explain
        )
        for u in users
    }
    read = recommender.model.config.max_len - 1
    for row in rows:
        ids, times, rated = history[row[schema.USER_ID]]
        item = row[schema.ITEM_ID]
        every = explain(recommender, ids, times, [item], top=read, ratings=rated)[item]
        _check_reasons(row[BECAUSE], {(r.item_id, r.timestamp): r.weight for r in every})
    assert sum(bool(row[BECAUSE]) for row in rows) > len(rows) // 2


def _check_reasons(got: list[dict], weights: dict[tuple[str, int], float], noise=1e-5) -> None:
    """``got`` are the strongest of ``weights`` (event -> drop), strongest first, with shares
    in proportion to their weights."""
    assert len(got) <= TOP_REASONS
    for reason in got:
        drop = weights.get((reason["item_id"], reason["timestamp"]), 0.0)
        assert reason["weight"] == pytest.approx(drop, rel=1e-3, abs=noise)
        assert reason["weight"] > 0 and 0 < reason["share"] <= 1
        ratio = reason["weight"] / got[0]["weight"]
        assert reason["share"] / got[0]["share"] == pytest.approx(ratio, rel=1e-4)
    assert [r["weight"] for r in got] == sorted((r["weight"] for r in got), reverse=True)
    shown = {(r["item_id"], r["timestamp"]) for r in got}
    left_out = [weight for event, weight in weights.items() if event not in shown]
    weakest_shown = got[-1]["weight"] if len(got) == TOP_REASONS else 0.0
    assert max(left_out, default=0.0) <= weakest_shown + noise  # nothing stronger left out
    assert sum(r["share"] for r in got) <= 1 + 1e-5


def test_reasons_keep_their_type_when_a_batch_has_none(tiny_run):
    """Histories of unknown items only: every list is empty, and still typed, so Ray Data
    joining this block with others keeps theirs."""
    predictor = ExplainingRecommender(run_layout.model_dir(tiny_run.run), k=K)
    ids, times = np.empty(2, object), np.empty(2, object)  # ragged rows, as Ray Data gives them
    ids[:], times[:] = [np.asarray(["never-seen"], object)] * 2, [np.asarray([5])] * 2
    table = predictor(
        {schema.USER_ID: np.asarray(["a", "b"]), schema.ITEM_IDS: ids, schema.TIMESTAMPS: times}
    )
    assert table.schema.field(BECAUSE).type == pa.list_(BECAUSE_TYPE)
    assert table.column(BECAUSE).to_pylist() == [[[]] * K, [[]] * K]


def test_the_help_says_what_explain_costs(capsys):
    assert cli.main(["recommend", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--explain" in text and "one more forward pass over max_len sequences per user" in text
