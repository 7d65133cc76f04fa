"""Every path on ``s3://`` (moto's S3 server over HTTP on loopback), through the real CLI.

The run must be restorable from S3 alone: a fresh process, given only the AWS environment,
resumes training from the run directory's checkpoints and reproduces the evaluation. The
secret key never appears in any output, log or stored object. The end-to-end run does all of
that on a real two-node cluster, one training worker per node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_dist import schema, storage
from recsys_dist.data.importers import DataFormatError, import_dataset

TINY = [
    "model.hidden_size=16",
    "model.intermediate_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "train.epochs=1",
    "train.eval_every=1",
    "train.batch_size=64",
    "train.warmup_steps=2",
]


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


DRIVER = """
import json, sys
from recsys_dist import cli
for argv in json.loads(sys.argv[1]):
    code = cli.main(argv)
    if code:
        sys.exit(code)
"""


def run_driver(commands: list[list[str]], cwd, address: str) -> tuple[list[dict], str]:
    """The real CLI in a fresh driver process that has nothing but the AWS environment;
    returns every JSON line it printed (one per ``--json`` command) and all it printed."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env={**os.environ, "RAY_ADDRESS": address},
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return lines, printed


@pytest.mark.slow
def test_two_nodes_train_and_resume_with_everything_on_s3(s3_prefix, train_checksum, tmp_path):
    """A real two-node cluster on loopback (``ray.cluster_utils.Cluster``: a head and a second
    node, each its own raylet and object store, as in Ray's own multi-node tests), one training
    worker per node, data, checkpoints and the export on S3, the only storage they share.

    Checked: each epoch streams every training row exactly once across the two nodes (the
    shards cannot be equal: an odd row count); a second, fresh driver reproduces the
    validation the export was selected by from S3 alone, recommends, and resumes training
    from the S3 checkpoint (one more epoch, not two); nothing is written locally; the secret
    key never shows.
    """
    from ray.cluster_utils import Cluster

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    raw, prepared, run = (storage.join(s3_prefix, name) for name in ("raw", "prepared", "run"))
    train = [
        *("train", "--data", prepared, "--output", run, "--workers", "2", "--json", *TINY),
        *("train.placement_strategy=STRICT_SPREAD", "train.cache_rows=0"),
    ]
    histories = storage.join(s3_prefix, "histories.parquet")
    recs = storage.join(s3_prefix, "out", "recs.parquet")
    recommend = ["recommend", "--run", run, "--histories", histories, "--output", recs]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        (generated, manifest, summary), first = run_driver(
            [
                ["generate", "--output", raw, "--num-users", "151", "--num-items", "50", "--json"],
                ["prepare", "--data", raw, "--output", prepared, "--max-len", "20", "--json"],
                train,
            ],
            tmp_path,
            cluster.address,
        )
        metrics_before = storage.read_text(storage.join(run, "metrics.jsonl"))
        write_histories(raw, histories, users=2)
        (again, rec, resumed), fresh = run_driver(
            [
                ["evaluate", "--run", run, "--split", "valid", "--json"],
                [*recommend, "--k", "5", "--json"],
                [*train, "train.epochs=2"],
            ],
            tmp_path,
            cluster.address,
        )
    finally:
        cluster.shutdown()

    assert manifest["counts"]["events"] == generated["events"]
    assert manifest["counts"]["train_rows"] % 2 == 1, "the test needs shards that cannot be equal"
    assert summary["workers"] == 2 and summary["epochs"] == 1
    for name in ("config.yaml", "run.json", "metrics.jsonl", "model/model.safetensors"):
        assert storage.is_file(storage.join(run, name)), name
    assert storage.list_files(storage.join(run, "ray_results"), "model.safetensors")
    epochs = [json.loads(line) for line in metrics_before.splitlines()]
    # Restored from S3 alone: the validation the export was selected by, to the last digit.
    validated = summary["best_metrics"]
    assert again["users"] == validated["valid_count"] > 0
    for k in ("hr@5", "hr@10", "ndcg@10", "mrr@10"):
        assert again[k] == pytest.approx(validated[f"valid_{k}"], rel=1e-9), k
    assert rec["users"] == 2 and read_table(recs).num_rows == 10
    assert resumed["epochs"] == 2
    after = storage.read_text(storage.join(run, "metrics.jsonl")).splitlines()
    lines = [json.loads(line) for line in after]
    assert lines[:1] == epochs and [line["epoch"] for line in lines] == [1, 2]
    assert [line["train_nodes"] for line in lines] == [2, 2]  # one worker on each node
    for line in lines:  # each epoch streamed (cache_rows=0): every row once, across two nodes
        assert line["train_sequences"] == manifest["counts"]["train_rows"]
        assert line["train_checksum"] == train_checksum(prepared)
    per_epoch = epochs[0]["step"]  # epoch 2 only, from the checkpoint
    assert abs(lines[1]["step"] - epochs[0]["step"] - per_epoch) <= 1, (lines, per_epoch)

    assert not list(tmp_path.iterdir()), "a path on S3 was written locally"
    assert secret not in first + fresh, "the secret key reached the output"
    leaked = [key for key, body in stored_objects(s3_prefix).items() if secret.encode() in body]
    assert not leaked, leaked


def write_histories(raw: str, histories: str, users: int) -> None:
    """The full logged events of the first ``users`` users, as a histories file on S3."""
    events = read_table(storage.list_files(storage.join(raw, schema.EVENTS_DIR), ".parquet")[0])
    chosen = events.column(schema.USER_ID).unique()[:users]
    with storage.open_output(histories) as sink:
        pq.write_table(events.filter(pc.is_in(events.column(schema.USER_ID), chosen)), sink)


class FlakyS3:
    """An HTTP proxy in front of the S3 server that answers every ``every``-th request with
    503 SlowDown (what S3 says when throttling) and forwards the rest unchanged."""

    def __init__(self, upstream: str, every: int) -> None:
        import http.server
        import threading

        self.upstream, self.every = urlsplit(upstream), every
        self.lock, self.forwarded, self.failed = threading.Lock(), 0, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                body = self._body()
                with proxy.lock:
                    fail = (proxy.failed + proxy.forwarded) % proxy.every == proxy.every - 1
                    proxy.failed += fail
                    proxy.forwarded += not fail
                if fail:
                    return self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                status, headers, answer = proxy.forward(self, body)
                self._reply(status, headers, answer)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if not any(name.lower() == "content-length" for name in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, request, body: bytes) -> tuple[int, dict, bytes]:
        import http.client

        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port)
        try:
            connection.putrequest(request.command, request.path, skip_host=True)
            for name, value in request.headers.items():
                if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            answer = connection.getresponse()
            data = answer.read()
            skip = ("transfer-encoding", "connection")
            if request.command != "HEAD":  # a HEAD's length is the object's, not the body's
                skip += ("content-length",)
            headers = {k: v for k, v in answer.getheaders() if k.lower() not in skip}
            return answer.status, headers, data
        finally:
            connection.close()

    def close(self) -> None:
        self.server.shutdown()


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@pytest.mark.slow
def test_a_job_outlives_an_s3_that_fails_one_request_in_twenty(s3_prefix, ray_session, tmp_path):
    """`prepare` from S3 to S3 through a proxy answering 5 % of requests with 503 SlowDown:
    the requests are retried, the job finishes, and its dataset equals the one prepared
    without faults (the same manifest, users and vocabulary; only the number of bucket
    files differs, as it follows the CPUs of the Ray each ran on)."""
    from recsys_dist.config import DataConfig
    from recsys_dist.data.prepare import prepare_dataset
    from recsys_dist.data.synthetic import generate_dataset

    raw = storage.join(s3_prefix, "raw")
    generate_dataset(raw, users=120, items=60, categories=4, seed=1)
    clean = storage.join(s3_prefix, "clean")
    prepare_dataset(raw, clean, DataConfig(max_len=20))
    flaky = FlakyS3(os.environ["AWS_ENDPOINT_URL"], every=20)
    faulty = storage.join(s3_prefix, "faulty")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "recsys_dist.cli", "prepare", "--data", raw]
            + ["--output", faulty, "--max-len", "20", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={**os.environ, "AWS_ENDPOINT_URL": flaky.url, "RAY_ADDRESS": "local"},
        )
    finally:
        flaky.close()
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert flaky.failed >= 5, (flaky.failed, flaky.forwarded)  # one request in 20 failed
    volatile = ("prepare_seconds", "taken", "num_buckets")  # buckets: the Ray's CPU count
    manifests = [storage.read_json(storage.join(d, schema.MANIFEST_FILE)) for d in (clean, faulty)]
    for manifest in manifests:
        for key in volatile:
            manifest.pop(key, None)
    assert manifests[0] == manifests[1]
    for name in (schema.USERS_DIR, schema.VOCAB_FILE):
        tables = []
        for root in (clean, faulty):
            files = storage.list_files(storage.join(root, name), ".parquet") or [
                storage.join(root, name)
            ]
            table = pa.concat_tables([read_table(f) for f in sorted(files)])
            tables.append(table.sort_by(table.column_names[0]))
        assert tables[0].equals(tables[1]), name
