"""The real CLI end to end on generated data: 2 Ray workers with DeepSpeed must learn."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, schema

pytestmark = pytest.mark.slow

TINY_MODEL = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "model.dropout=0.1",
    "model.attention_dropout=0.1",
    "train.epochs=30",
    "train.eval_every=10",
    "train.batch_size=32",
    "train.lr=0.003",
    "train.warmup_steps=20",
]


def run_cli(capsys, *argv: str) -> dict:
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_generate_prepare_train_evaluate_recommend(ray_session, tmp_path, capsys):
    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    generated = run_cli(
        capsys,
        "generate",
        "--output",
        str(raw),
        "--users",
        "400",
        "--items",
        "120",
        "--categories",
        "6",
        "--seed",
        "3",
        "--json",
    )
    manifest = run_cli(
        capsys,
        "prepare",
        "--data",
        str(raw),
        "--output",
        str(prepared),
        "--max-len",
        "30",
        "--json",
    )
    assert manifest["counts"]["events"] == generated["events"]
    summary = run_cli(
        capsys,
        "train",
        "--data",
        str(prepared),
        "--output",
        str(run),
        "--workers",
        "2",
        "--json",
        *TINY_MODEL,
    )
    assert summary["workers"] == 2 and (run / "model" / "model.safetensors").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [10, 20, 30]
    check_rerun_resumes_and_refuses_other_data(capsys, raw, prepared, run, tmp_path)

    result = run_cli(capsys, "evaluate", "--run", str(run), "--split", "test", "--json")
    assert result["protocol"].startswith("full-catalogue")
    for k in (5, 10, 20):
        assert {f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"} <= result.keys()
    popular = result["baseline_popularity"]["ndcg@10"]
    assert result["ndcg@10"] > 1.5 * popular, (result["ndcg@10"], popular)

    sampled = run_cli(capsys, "evaluate", "--run", str(run), "--sampled", "50", "--json")
    assert sampled["protocol"].startswith("SAMPLED") and sampled["hr@10"] >= result["hr@10"]

    events = pq.read_table(sorted((raw / schema.EVENTS_DIR).glob("*.parquet"))[0])
    users = events.column(schema.USER_ID).unique()[:2]
    histories = events.filter(pc.is_in(events.column(schema.USER_ID), users))
    unknown = histories.slice(0, 1).set_column(1, schema.ITEM_ID, [["never-seen"]])
    unknown = unknown.cast(histories.schema)
    pq.write_table(pa.concat_tables([histories, unknown]), tmp_path / "h.parquet")
    out = tmp_path / "recs.parquet"
    rec = run_cli(
        capsys,
        "recommend",
        "--run",
        str(run),
        "--histories",
        str(tmp_path / "h.parquet"),
        "--k",
        "7",
        "--output",
        str(out),
        "--json",
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

    interests = run_cli(
        capsys, "interests", "--run", str(run), "--output", str(tmp_path / "int"), "--json"
    )
    check_interests(interests, raw, tmp_path / "int", users=400)
    some = run_cli(
        capsys,
        "interests",
        "--run",
        str(run),
        "--users",
        *users.to_pylist(),
        "--output",
        str(tmp_path / "two"),
        "--json",
    )
    assert "evaluation" not in some  # the run's fitted forecast (RUN/interests.json) is reused
    assert some["analysis"]["users"] == 2

    page = tmp_path / "report.html"
    report = run_cli(capsys, "report", "--run", str(run), "--output", str(page), "--json")
    assert report["users"] == 6 and page.stat().st_size == report["bytes"]
    html = page.read_text()
    for section in ("training", "metrics", "users", "drift"):
        assert f'<section id="{section}"' in html, section
    assert html.count('<article class="user">') == 6 and "forecast" in html


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


def test_prepare_append_keeps_settings_and_refuses_repeats(ray_session, tmp_path, capsys):
    """`prepare --append` adds a day without restating --max-len; re-adding a day exits 2."""
    for day, seed in (("day=1", 1), ("day=2", 2)):
        run_cli(
            capsys,
            *("generate", "--output", str(tmp_path / day), "--users", "60", "--items", "40"),
            *("--categories", "4", "--seed", str(seed), "--json"),
        )
    prepared = str(tmp_path / "prepared")
    first = run_cli(
        capsys,
        *("prepare", "--data", str(tmp_path / "day=1"), "--output", prepared),
        *("--max-len", "20", "--json"),
    )
    both = run_cli(
        capsys,
        *("prepare", "--data", str(tmp_path / "day=2"), "--output", prepared),
        *("--append", "--json"),
    )
    assert both["config"]["max_len"] == 20 and both["files"] == 2
    assert both["counts"]["events_accepted"] > first["counts"]["events_accepted"]
    again = ["prepare", "--data", str(tmp_path / "day=2"), "--output", prepared, "--append"]
    assert cli.main(again) == 2
    assert "already prepared" in capsys.readouterr().err


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


def check_rerun_resumes_and_refuses_other_data(capsys, raw, prepared, run, tmp_path) -> None:
    """Training again into a finished run with one more epoch continues from its latest
    checkpoint (epochs 1-30 are not trained again); a run of other data, split or model shape
    is refused (exit 2) rather than silently resumed."""
    again = ["train", "--data", str(prepared), "--output", str(run), "--workers", "2"]
    more = [o for o in TINY_MODEL if not o.startswith("train.epochs")]
    resumed = run_cli(capsys, *again, "--json", *more, "train.epochs=31")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [10, 20, 30, 31] and resumed["epochs"] == 31
    per_epoch = lines[2]["step"] / 30  # shards are re-split on a new run: +-1 step an epoch
    assert abs(lines[3]["step"] - lines[2]["step"] - per_epoch) <= 1, (lines, per_epoch)
    window = tmp_path / "window"
    run_cli(
        capsys,
        *("prepare", "--data", str(raw), "--output", str(window), "--max-len", "30"),
        *("--holdout-events", "2", "--json"),
    )
    other = ["train", "--data", str(window), "--output", str(run), "--workers", "2"]
    assert cli.main([*other, *more, "train.epochs=31"]) == 2
    assert "data_config" in capsys.readouterr().err
    wider = [*again, *more, "train.epochs=31", "model.hidden_size=64"]
    assert cli.main(wider) == 2 and "model_config" in capsys.readouterr().err
