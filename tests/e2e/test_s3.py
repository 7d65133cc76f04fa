"""Every path on ``s3://`` (moto's S3 server over HTTP on loopback), through the real CLI.

The run must be restorable from S3 alone: a fresh process, given only the AWS environment,
resumes training from the run directory's checkpoints and reproduces the evaluation. The
secret key never appears in any output, log or stored object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_dist import cli, schema, storage
from recsys_dist.data.importers import DataFormatError, import_dataset

TINY = [
    "model.hidden_size=16",
    "model.intermediate_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.epochs=2",
    "train.eval_every=1",
    "train.batch_size=64",
    "train.warmup_steps=2",
]


def run_cli(capsys, seen: list[str], *argv: str) -> dict:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    seen += [captured.out, captured.err]
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def read_table(path: str) -> pa.Table:
    with storage.open_input(path) as source:
        return pq.read_table(source)


def stored_objects(prefix: str) -> dict[str, bytes]:
    """Every object under an ``s3://bucket/prefix``, read back with boto3 (not our code)."""
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_import_csv_and_parquet_from_s3_to_s3(s3_prefix):
    storage.write_text(
        storage.join(s3_prefix, "in", "log.csv"), "uid,item,ts\nu1,a,10\nu1,b,20\nu2,a,15\n"
    )
    out = storage.join(s3_prefix, "csv-out")
    mapping = {"user_id": "uid", "item_id": "item", "timestamp": "ts"}
    summary = import_dataset("csv", storage.join(s3_prefix, "in"), out, mapping)
    assert (summary.events, summary.files_written) == (3, 1)
    events = read_table(storage.join(out, schema.EVENTS_DIR, "part-00000.parquet"))
    assert events.schema == schema.EVENT_SCHEMA
    assert events.column(schema.TIMESTAMP).to_pylist() == [10, 20, 15]

    parquet_out = storage.join(s3_prefix, "parquet-out")
    assert import_dataset("parquet", storage.join(out, schema.EVENTS_DIR), parquet_out).events == 3
    with pytest.raises(FileExistsError):
        import_dataset("parquet", storage.join(out, schema.EVENTS_DIR), parquet_out)

    bad = storage.join(s3_prefix, "bad", "log.csv")
    storage.write_text(bad, "user_id,item_id,timestamp\nu1,a,10\n,b,20\n")
    with pytest.raises(DataFormatError, match=r"s3://.*/bad/log\.csv line 3: field 'user_id'"):
        import_dataset("csv", bad, storage.join(s3_prefix, "bad-out"))
    assert storage.is_empty_dir(storage.join(s3_prefix, "bad-out", schema.EVENTS_DIR))


@pytest.mark.slow
def test_generate_prepare_train_evaluate_recommend_all_on_s3(
    ray_session, s3_prefix, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(tmp_path)  # a URI mistaken for a local path would show up here
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    seen: list[str] = []
    raw, prepared, run = (storage.join(s3_prefix, name) for name in ("raw", "prepared", "run"))

    generated = run_cli(
        capsys, seen, "generate", "--output", raw, "--users", "150", "--items", "50",
        "--categories", "5", "--json",
    )  # fmt: skip
    manifest = run_cli(
        capsys, seen, "prepare", "--data", raw, "--output", prepared, "--max-len", "20", "--json"
    )
    assert manifest["counts"]["events"] == generated["events"]
    train = ["train", "--data", prepared, "--output", run, "--workers", "2", "--json", *TINY]
    summary = run_cli(capsys, seen, *train)
    assert summary["workers"] == 2 and summary["epochs"] == 2
    for name in ("config.yaml", "run.json", "metrics.jsonl", "model/model.safetensors"):
        assert storage.is_file(storage.join(run, name)), name
    assert storage.list_files(storage.join(run, "ray_results"), "model.safetensors")
    metrics_before = storage.read_text(storage.join(run, "metrics.jsonl"))

    evaluated = run_cli(capsys, seen, "evaluate", "--run", run, "--split", "test", "--json")
    assert evaluated["users"] > 0 and 0 <= evaluated["ndcg@10"] <= 1

    events = read_table(storage.list_files(storage.join(raw, schema.EVENTS_DIR), ".parquet")[0])
    users = events.column(schema.USER_ID).unique()[:2]
    histories = storage.join(s3_prefix, "histories.parquet")
    with storage.open_output(histories) as sink:
        pq.write_table(events.filter(pc.is_in(events.column(schema.USER_ID), users)), sink)
    recs = storage.join(s3_prefix, "out", "recs.parquet")
    rec = run_cli(
        capsys, seen, "recommend", "--run", run, "--histories", histories, "--k", "5",
        "--output", recs, "--json",
    )  # fmt: skip
    assert rec["users"] == 2 and read_table(recs).num_rows == 10

    # A clean process with nothing but the AWS environment: rerun train (finished: it must
    # resume from S3 without training again), then evaluate the re-exported model.
    script = (
        "import sys; from recsys_dist import cli; "
        f"sys.exit(cli.main({train!r}) or cli.main({['evaluate', '--run', run, '--json']!r}))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, cwd=tmp_path,
    )  # fmt: skip
    seen += [fresh.stdout, fresh.stderr]
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    resumed, again = (json.loads(line) for line in fresh.stdout.strip().splitlines()[-2:])
    assert "resuming from epoch 2" in fresh.stderr  # both ranks restored the S3 checkpoint
    assert resumed["epochs"] == 2 and resumed["best_epoch"] == summary["best_epoch"]
    assert storage.read_text(storage.join(run, "metrics.jsonl")) == metrics_before
    numbers = {k: v for k, v in evaluated.items() if isinstance(v, float)}
    assert {k: again[k] for k in numbers} == pytest.approx(numbers)
    assert again["baseline_popularity"] == pytest.approx(evaluated["baseline_popularity"])
    assert again["users"] == evaluated["users"]

    assert not list(tmp_path.iterdir()), "a path on S3 was written locally"
    seen.append(caplog.text)
    assert not [text for text in seen if secret in text], "the secret key reached the output"
    leaked = [key for key, body in stored_objects(s3_prefix).items() if secret.encode() in body]
    assert not leaked, leaked
