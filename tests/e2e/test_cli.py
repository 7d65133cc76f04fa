"""The real CLI end to end on generated data: 2 Ray workers with DeepSpeed must learn."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, schema

pytestmark = pytest.mark.slow


def test_the_shared_run_trained_on_two_workers_and_exported(trained_run):
    """The session's run (tests/conftest.py) went through generate, prepare and train."""
    assert trained_run.manifest["counts"]["events"] == trained_run.generated["events"]
    assert trained_run.summary["workers"] == 2
    assert (trained_run.run / "model" / "model.safetensors").exists()
    rows = [
        json.loads(line) for line in (trained_run.run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in rows] == [10, 20, 30]
    for row in rows:  # purchases carry ratings: the head's errors beside every validation
        assert 0 < row["valid_mae"] <= row["valid_rmse"] < 4
        assert 0 < row["train_s"] <= row["elapsed_s"]  # steps only, within the whole


def test_evaluate_full_catalogue_beats_popularity_and_sampled_is_labelled(trained_run, cli_json):
    run = str(trained_run.run)
    result = cli_json("evaluate", "--run", run, "--split", "test")
    assert result["protocol"].startswith("full-catalogue")
    for k in (5, 10, 20):
        assert {f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"} <= result.keys()
    popular = result["baseline_popularity"]["ndcg@10"]
    assert result["ndcg@10"] > 1.5 * popular, (result["ndcg@10"], popular)
    sampled = cli_json("evaluate", "--run", run, "--sampled", "50")
    assert sampled["protocol"].startswith("SAMPLED") and sampled["hr@10"] >= result["hr@10"]
    # Generated purchases carry ratings: RMSE/MAE beside the ranking, with the baselines.
    ratings = result["ratings"]
    assert ratings["rated_targets"] > 0
    for errors in (ratings["model"], *ratings["baselines"].values()):
        assert 0 < errors["mae"] <= errors["rmse"] < 4  # ratings are 1-5


def test_recommend_can_rank_by_predicted_rating(trained_run, tmp_path, cli_json, capsys):
    events = pq.read_table(sorted((trained_run.raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    user = events.column(schema.USER_ID)[0].as_py()
    pq.write_table(
        events.filter(pc.equal(events.column(schema.USER_ID), user)), tmp_path / "h.parquet"
    )
    run, out = str(trained_run.run), tmp_path / "by-rating.parquet"
    argv = ["recommend", "--run", run, "--histories", str(tmp_path / "h.parquet"), "--k", "5"]
    result = cli_json(*argv, "--output", str(out), "--rank-by", "rating")
    assert result["rows"] == 5
    rated = pq.read_table(out).column("score").to_pylist()
    assert rated == sorted(rated, reverse=True) and all(1 <= r <= 5 for r in rated)
    assert cli.main([*argv, "--output", str(out), "--rank-by", "rating", "--explain"]) == 2
    assert "--explain" in capsys.readouterr().err


def test_score_ratings_rates_pairs_and_names_a_bad_file(trained_run, tmp_path, cli_json, capsys):
    users = pq.read_table(trained_run.prepared / schema.USERS_DIR).column(schema.USER_ID)[:3]
    events = pq.read_table(sorted((trained_run.raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    items = events.column(schema.ITEM_ID).unique()[:2].to_pylist()
    pairs = pa.table(
        {
            schema.USER_ID: [u for u in users.to_pylist() for _ in items],
            schema.ITEM_ID: items * len(users),
        }
    )
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    out = tmp_path / "rated.parquet"
    run = str(trained_run.run)
    result = cli_json(
        *("score-ratings", "--run", run, "--pairs", str(tmp_path / "pairs.parquet")),
        *("--output", str(out)),
    )
    assert result["pairs"] == 6 and result["users_without_history"] == 0
    rated = pq.read_table(out).column("predicted_rating").to_numpy()
    assert ((1 <= rated) & (rated <= 5)).all()
    pq.write_table(pa.table({"user": ["a"]}), tmp_path / "bad.parquet")
    code = cli.main(
        [
            "score-ratings",
            "--run",
            run,
            "--pairs",
            str(tmp_path / "bad.parquet"),
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "no column 'user_id'" in capsys.readouterr().err


def two_users_histories(trained_run, path) -> tuple[pa.Array, pa.Table]:
    """Two generated users' events and one unknown item, written to ``path``."""
    events = pq.read_table(sorted((trained_run.raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    users = events.column(schema.USER_ID).unique()[:2]
    histories = events.filter(pc.is_in(events.column(schema.USER_ID), users))
    unknown = histories.slice(0, 1).set_column(1, schema.ITEM_ID, [["never-seen"]])
    unknown = unknown.cast(histories.schema)
    pq.write_table(pa.concat_tables([histories, unknown]), path)
    return users, histories


def test_recommend_ranks_unseen_items_and_counts_unknown_ones(trained_run, tmp_path, cli_json):
    users, histories = two_users_histories(trained_run, tmp_path / "h.parquet")
    out = tmp_path / "recs.parquet"
    rec = cli_json(
        *("recommend", "--run", str(trained_run.run), "--histories", str(tmp_path / "h.parquet")),
        *("--k", "7", "--output", str(out)),
    )
    assert rec["users"] == 2 and rec["rows"] == 14 and rec["unknown_items_ignored"] == 1
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score"]
    for user in users.to_pylist():
        mine = table.filter(pc.equal(table.column("user_id"), user)).to_pylist()
        assert [r["rank"] for r in mine] == list(range(1, 8))
        assert all(a["score"] >= b["score"] for a, b in zip(mine, mine[1:], strict=False))
        seen = set(
            histories.filter(pc.equal(histories.column("user_id"), user))
            .column("item_id")
            .to_pylist()
        )
        assert not seen & {r["item_id"] for r in mine}  # seen items excluded by default


def test_recommend_explain_gives_each_row_the_events_behind_it(trained_run, tmp_path, cli_json):
    """``--explain`` adds ``because`` and changes nothing else: the same rows as without it,
    each with up to 3 of its user's recent events, strongest first."""
    users, histories = two_users_histories(trained_run, tmp_path / "h.parquet")
    run = ("recommend", "--run", str(trained_run.run), "--histories", str(tmp_path / "h.parquet"))
    plain, explained = tmp_path / "plain.parquet", tmp_path / "explained.parquet"
    cli_json(*run, "--k", "5", "--output", str(plain))
    rec = cli_json(*run, "--k", "5", "--output", str(explained), "--explain")
    assert rec["users"] == 2 and rec["rows"] == 10 and rec["unknown_items_ignored"] == 1
    table = pq.read_table(explained)
    assert table.column_names == ["user_id", "rank", "item_id", "score", "because"]
    assert table.schema.field("because").type == pa.list_(
        pa.struct(
            [
                ("item_id", pa.string()),
                ("timestamp", pa.int64()),
                ("weight", pa.float32()),
                ("share", pa.float32()),
            ]
        )
    )
    order = [("user_id", "ascending"), ("rank", "ascending")]
    without = pq.read_table(plain).sort_by(order)
    table = table.sort_by(order)
    assert table.select(["user_id", "rank", "item_id"]).equals(
        without.select(["user_id", "rank", "item_id"])
    )
    config = json.loads((trained_run.run / "model" / "config.json").read_text())
    read = config["max_len"] - 1  # the events the model reads: the most recent ones
    for user in users.to_pylist():
        mine = histories.filter(pc.equal(histories.column("user_id"), user)).sort_by("timestamp")
        recent = set(
            zip(mine["item_id"].to_pylist()[-read:], mine["timestamp"].to_pylist()[-read:])
        )
        rows = table.filter(pc.equal(table.column("user_id"), user)).to_pylist()
        assert all(row["because"] for row in rows)  # a trained model's top items owe it to some
        for row in rows:
            reasons = row["because"]
            assert len(reasons) <= 3
            assert {(r["item_id"], r["timestamp"]) for r in reasons} <= recent
            weights = [r["weight"] for r in reasons]
            assert weights == sorted(weights, reverse=True) and weights[-1] > 0
            assert 0 < sum(r["share"] for r in reasons) <= 1 + 1e-5


def test_interests_of_every_user_and_of_a_few(trained_run, tmp_path, cli_json):
    check_interests(
        trained_run.interests, trained_run.raw, trained_run.root / "interests", users=400
    )
    events = pq.read_table(sorted((trained_run.raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    users = events.column(schema.USER_ID).unique()[:2].to_pylist()
    some = cli_json(
        "interests", "--run", str(trained_run.run), "--users", *users, "--output", str(tmp_path)
    )
    assert "evaluation" not in some  # the run's fitted forecast (RUN/interests.json) is reused
    assert some["analysis"]["users"] == 2


def test_report_draws_every_section(trained_run, tmp_path, cli_json):
    page = tmp_path / "report.html"
    report = cli_json("report", "--run", str(trained_run.run), "--output", str(page))
    assert report["users"] == 6 and page.stat().st_size == report["bytes"]
    html = page.read_text()
    for section in ("training", "metrics", "users", "drift"):
        assert f'<section id="{section}"' in html, section
    assert html.count('<article class="user">') == 6 and "forecast" in html
    assert html.count('<table class="recommendations">') == 6 and "because you …" in html


def test_a_run_of_other_data_or_shape_is_refused_not_resumed(
    trained_run, tmp_path, capsys, cli_json
):
    """Training into the shared run with another split or a wider model exits 2 before any
    worker starts (resuming is checked on S3, tests/e2e/test_s3.py)."""
    window = tmp_path / "window"
    cli_json(
        *("prepare", "--data", str(trained_run.raw), "--output", str(window)),
        *("--max-len", str(trained_run.max_len), "--holdout-events", "2"),
    )

    def train(data, *more: str) -> list[str]:
        options = ("--data", str(data), "--output", str(trained_run.run), "--workers", "2")
        return ["train", *options, *trained_run.model, *more]

    before = (trained_run.run / "metrics.jsonl").read_text()
    assert cli.main(train(window)) == 2
    assert "data_config" in capsys.readouterr().err
    assert cli.main(train(trained_run.prepared, "model.hidden_size=64")) == 2
    assert "model_config" in capsys.readouterr().err
    assert (trained_run.run / "metrics.jsonl").read_text() == before


def test_bad_input_exits_2_with_file_row_field(ray_session, tmp_path, capsys):
    events = tmp_path / "raw" / schema.EVENTS_DIR
    events.mkdir(parents=True)
    pq.write_table(
        pa.table({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": [1.0, float("inf")]}),
        events / "log.parquet",
    )
    code = cli.main(["prepare", "--data", str(tmp_path / "raw"), "--output", str(tmp_path / "p")])
    assert code == cli.EXIT_BAD_INPUT
    assert "log.parquet row 2: field 'timestamp'" in capsys.readouterr().err


def test_prepare_append_keeps_settings_and_takes_nothing_twice(
    ray_session, tmp_path, capsys, cli_json
):
    """`prepare --append` adds a day without restating --max-len; re-adding a day is a no-op
    that says so."""
    for day, seed in (("day=1", 1), ("day=2", 2)):
        cli_json(
            *("generate", "--output", str(tmp_path / day)),
            *("--num-users", "60", "--num-items", "40"),
            *("--num-categories", "4", "--seed", str(seed)),
        )
    prepared = str(tmp_path / "prepared")
    first = cli_json(
        *("prepare", "--data", str(tmp_path / "day=1"), "--output", prepared),
        *("--max-len", "20"),
    )
    both = cli_json(
        *("prepare", "--data", str(tmp_path / "day=2"), "--output", prepared), "--append"
    )
    assert both["config"]["max_len"] == 20 and both["files"] == 2
    assert both["counts"]["events_accepted"] > first["counts"]["events_accepted"]
    again = ["prepare", "--data", str(tmp_path / "day=2"), "--output", prepared, "--append"]
    assert cli.main(again) == 0
    assert capsys.readouterr().out.startswith("nothing new: all 1 file(s)")
    assert cli_json(*again)["counts"] == both["counts"]


def check_interests(result: dict, raw, out, users: int) -> None:
    """Forecast evaluated against the three baselines; every user analysed; drifting users
    (the generator's ground truth) drift more than stable ones."""
    import numpy as np

    from recsys_dist.data import synthetic

    methods = result["evaluation"]["methods"]
    assert set(methods) == {"forecast", "model_only", "last_window", "long_term", "decayed"}
    assert all(0 <= m["js"] <= 1 and 0 <= m["top_accuracy"] <= 1 for m in methods.values())
    from recsys_dist.interests.evaluate import BLENDS, HALF_LIVES, TEMPERATURES

    fitted = result["evaluation"]["calibration"]
    assert fitted["blend"] in BLENDS and fitted["half_life"] in HALF_LIVES
    assert fitted["temperature"] in TEMPERATURES
    for baseline, differences in result["evaluation"]["forecast_minus_baseline"].items():
        for metric in ("js", "top_accuracy"):  # paired differences agree with the means
            low, mean, high = differences[metric]
            gap = methods["forecast"][metric] - methods[baseline][metric]
            assert low <= mean <= high and abs(mean - gap) < 1e-9, (baseline, metric)
    assert result["analysis"]["users"] == users
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert groups and all(g.startswith("cat-") for g in groups)
    table = pq.read_table(out / "interests.parquet").to_pandas().set_index(schema.USER_ID)
    assert len(table) == users
    for row in table.itertuples():
        profiles = np.stack(row.profiles)
        assert profiles.shape == (len(row.window_starts), len(groups))
        assert np.allclose(profiles.sum(axis=1), 1, atol=1e-4)
        assert abs(sum(row.forecast) - 1) < 1e-4 and row.forecast_top_group in groups
        assert sum(row.window_counts) == row.events
    truth = pq.read_table(raw / synthetic.USERS_DIR).to_pandas().set_index(schema.USER_ID)
    drift = table["drift"].groupby(truth[synthetic.DRIFT_KIND]).mean()
    assert drift["abrupt"] > 1.5 * drift["stable"], drift
