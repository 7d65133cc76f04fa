"""One turn of the retraining loop through the real CLI, from the shared trained run."""

from __future__ import annotations

from recsys_dist import storage


def test_a_turn_promotes_a_warm_candidate_and_takes_each_file_once(trained_run, tmp_path, cli_json):
    root, work, log_dir = (str(tmp_path / name) for name in ("registry", "work", "event_log"))
    first = cli_json("models", "register", "--registry", root, "--run", str(trained_run.run))
    cli_json("models", "promote", "--registry", root, first["version"])
    cli_json(  # the same users, 20 items the shared run never saw
        *("generate", "--output", log_dir, "--users", "400", "--items", "220"),
        *("--categories", "4", "--seed", "5"),
    )
    turn = ["retrain", "--registry", root, "--events", log_dir, "--output", work, "--workers", "1"]
    result = cli_json(*turn, "retrain.epochs=2")
    assert result["parent"] == first["version"] and result["new_files"] >= 1
    assert result["new_items"] == 20 and result["events"] > 0
    assert result["promoted"], result["reason"]
    listed = cli_json("models", "list", "--registry", root)
    assert listed["current"] == result["candidate"]
    assert [r["parent"] for r in listed["versions"]] == [None, first["version"]]
    assert storage.is_dir(f"{work}/prepared") and not storage.is_dir(f"{root}/prepared")
    again = cli_json(*turn)
    assert again["candidate"] is None and not again["promoted"]
    assert again["reason"].startswith("nothing new") and again["new_files"] == 0
    assert cli_json("models", "list", "--registry", root)["current"] == result["candidate"]
