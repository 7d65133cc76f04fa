"""What the command prints: a short summary by default, one compact JSON line with --json,
the version, the resolved config; -v/--json/--address before or after the sub-command and
its action. That --json leaves nothing out but the names a command gives:
tests/test_cli_json.py."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
import yaml

from recsys_dist import cli, console
from recsys_dist.config import Config


def run(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_version(capsys):
    assert run(capsys, "--version") == f"recsys-dist {version('recsys-dist')}\n"


def test_config_show_prints_defaults_and_overrides(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {hidden_size: 48}\n")
    shown = yaml.safe_load(run(capsys, "config", "show", "--config", str(path), "train.lr=0.01"))
    defaults = Config().to_dict()
    assert shown["train"]["lr"] == 0.01 and shown["model"]["hidden_size"] == 48
    assert shown["data"] == defaults["data"] and shown["serve"] == defaults["serve"]
    line = run(capsys, "config", "show", "--json", "train.lr=0.01")
    assert line.count("\n") == 1 and json.loads(line)["train"]["lr"] == 0.01


PREPARE = ["prepare", "--data", "raw", "--output", "out"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "--json", "--address", "ray://h:10001", *PREPARE],
        [*PREPARE, "--json", "-v", "--address", "ray://h:10001"],
        ["--json", *PREPARE, "--verbose", "--address=ray://h:10001"],
    ],
)
def test_global_flags_parse_the_same_before_or_after_the_sub_command(argv):
    args = vars(cli.build_parser().parse_args(argv))
    assert (args["verbose"], args["json"], args["address"]) == (True, True, "ray://h:10001")
    plain = vars(cli.build_parser().parse_args(PREPARE))
    assert (plain["verbose"], plain["json"], plain["address"]) == (False, False, None)
    assert {k: v for k, v in args.items() if k not in ("verbose", "json", "address")} == {
        k: v for k, v in plain.items() if k not in ("verbose", "json", "address")
    }


KEYS = ["--file", "k.json"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "--json", "keys", "list", *KEYS],
        ["keys", "-v", "--json", "list", *KEYS],
        ["keys", "--json", "list", "-v", *KEYS],
        ["keys", "list", *KEYS, "--json", "--verbose"],
    ],
)
def test_global_flags_parse_on_either_side_of_an_action(argv):
    args = vars(cli.build_parser().parse_args(argv))
    assert (args["verbose"], args["json"], args["action"], args["file"]) == (
        True,
        True,
        "list",
        "k.json",
    )
    assert args["address"] is None  # keys does not start Ray: no --address of its own


def test_keys_json_before_the_action_prints_one_json_line(tmp_path, capsys):
    for argv in (["keys", "--json", "list"], ["keys", "list", "--json"]):
        line = run(capsys, *argv, "--file", str(tmp_path / "k.json"))
        assert line.count("\n") == 1 and json.loads(line)["keys"] == []


def manifest() -> dict:
    """What ``prepare`` returns (manifest.json), with its bulky parts."""
    files = [f"raw/events/part-{i:05d}.parquet" for i in range(120)]
    return {
        "format_version": 3,
        "files": len(files),
        "input_files": files,
        "sources": [{"path": "raw", "files": len(files), "data_hash": "ab"}],
        "split": "loo",
        "max_len": 50,
        "vocab_size": 52,
        "num_items": 50,
        "counts": {
            "events": 10_110,
            "events_accepted": 10_110,
            "users": 200,
            "bad_rows_skipped": 3,
            "duplicates_dropped": 0,
            "users_below_min_events": 1,
            "train_rows": 299,
            "valid_rows": 200,
            "test_rows": 200,
        },
        "bad_rows": {"per_file": {f: 0 for f in files}, "examples": []},
        "time_histogram": {"bins": list(range(5000)), "counts": [1] * 5000},
        "skewed_users": [],
        "data_hash": "ab",
        "config": {"max_len": 50, "split": "loo"},
        "prepare_seconds": 3.5,
    }


def test_json_is_one_compact_line_without_the_internals_prepare_names(capsys):
    console.print_result(cli.COMMANDS["prepare"].for_json(manifest()), as_json=True)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and ", " not in out and len(out) < 1000
    printed = json.loads(out)
    for bulky in ("time_histogram", "input_files", "sources", "bad_rows", "skewed_users"):
        assert bulky not in printed  # manifest.json keeps them
    assert printed["counts"] == manifest()["counts"] and printed["files"] == 120
    assert printed["config"]["max_len"] == 50  # what tests and jobs read is kept


class Args:
    output, run, k = "prepared/", "runs/r1", 7


SUMMARIES = {
    "import": {"output": "data/x", "format": "csv", "events": 3, "items": 0, "files_written": 1},
    "prepare": manifest(),
    "train": {
        "run_dir": "runs/r1",
        "model_dir": "runs/r1/model",
        "best_metrics": {"valid_ndcg@10": 0.25, "epoch": 20},
        "best_epoch": 20,
        "epochs": 30,
        "train_seconds": 95.3,
        "workers": 2,
    },
    "recommend": {"users": 2, "rows": 14, "unknown_items_ignored": 1, "output": "recs.parquet"},
    "interests": {
        "analysis": {
            "output": "out/int",
            "users": 400,
            "groups": 6,
            "users_with_change_points": 100,
            "mean_drift": 0.21,
            "seconds": 3.0,
        },
        "evaluation": {
            "methods": {
                name: {"js": js, "top_accuracy": 0.5}
                for name, js in (("forecast", 0.2), ("model_only", 0.3), ("decayed", 0.25))
            }
        },
    },
    "report": {"output": "report.html", "bytes": 60_000, "users": 6},
}
MENTIONS = {
    "import": "data/x",
    "prepare": "prepared/",
    "train": "runs/r1/model",
    "recommend": "recs.parquet",
    "interests": "25%",
    "report": "open it in a browser",
}


def summary(command: str, result: dict) -> str:
    return "\n".join(cli.COMMANDS[command].lines(result, Args(), 2.0))


@pytest.mark.parametrize("command", SUMMARIES)
def test_summaries_are_a_few_lines_with_the_outputs(command):
    text = summary(command, SUMMARIES[command])
    assert 1 < len(text.splitlines()) <= 6 and MENTIONS[command] in text, text
    assert "{" not in text  # no JSON dumps


def test_prepare_hints_at_the_preset_that_fits_long_histories():
    """ml-1m prepared at the defaults: the model would see 50 of ~165 events a user."""
    long = manifest()
    long["counts"] = {**long["counts"], "events": 33_000}  # 165 a user
    text = summary("prepare", long)
    assert "average 165 events" in text and "--config long-histories" in text, text
    assert "train --data" in text and len(text.splitlines()) <= 6  # not yet: prepare again


def test_prepare_names_the_preset_of_a_sparse_log_in_its_next_command():
    """Beauty-like (51 events a user here) at the length it suits: no hint, but the next
    command carries the preset, whose dropout is the sparse logs' (prepare cannot set it)."""
    text = summary("prepare", manifest())
    assert "hint" not in text
    assert "next:   recsys-dist train --config short-histories --data" in text, text


def test_generate_prints_a_short_summary_or_one_json_line(ray_session, tmp_path, capsys):
    out = str(tmp_path / "raw")
    argv = ["generate", "--output", out, "--num-users", "50", "--num-items", "30"]
    argv += ["--num-categories", "3"]
    text = run(capsys, *argv)
    assert 1 < len(text.splitlines()) <= 4 and out in text and "50 users" in text, text
    line = run(capsys, *argv, "--overwrite", "--json")
    assert line.count("\n") == 1
    assert json.loads(line)["users"] == 50 and json.loads(line)["output"] == out
