"""storage.py behaves the same on a local directory and on S3 (moto over HTTP on loopback)."""

from __future__ import annotations

import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_dist import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_prefix")


def test_join_keeps_uris():
    assert storage.join("s3://bucket/a", "b", "c.json") == "s3://bucket/a/b/c.json"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"
    assert storage.is_remote("s3://bucket") and not storage.is_remote("/tmp/a")


def test_text_json_exists_and_kinds(root):
    path = storage.join(root, "deep", "run.json")
    assert not storage.exists(path) and storage.is_empty_dir(root)
    storage.write_json(path, {"a": [1, 2]})
    assert storage.read_json(path) == {"a": [1, 2]}
    assert storage.is_file(path) and not storage.is_dir(path)
    assert storage.is_dir(storage.join(root, "deep")) and not storage.is_empty_dir(root)
    storage.write_text(path, "replaced\n")
    assert storage.read_text(path) == "replaced\n"
    storage.delete_file(path)
    storage.delete_file(path)  # already gone: no error
    assert not storage.exists(path)


def test_list_files_skips_hidden_and_keeps_the_given_form(root):
    for name in ("b/2.parquet", "a.parquet", "_SUCCESS", ".hidden/x.parquet", "c.txt"):
        storage.write_text(storage.join(root, name), "x")
    assert storage.list_files(root, ".parquet") == [
        storage.join(root, "a.parquet"),
        storage.join(root, "b", "2.parquet"),
    ]
    assert storage.list_files(root, ".parquet", recursive=False) == [
        storage.join(root, "a.parquet")
    ]
    with pytest.raises(FileNotFoundError):
        storage.list_files(storage.join(root, "missing"), ".parquet")


def test_parquet_through_open_input_and_output(root):
    table = pa.table({"x": [1, 2, 3]})
    path = storage.join(root, "t", "part-0.parquet")
    with storage.open_output(path) as out:
        pq.write_table(table, out)
    with storage.open_input(path) as source:
        assert pq.ParquetFile(source).read().equals(table)
    written = storage.join(root, "t", "part-1.parquet")
    storage.write_parquet(table, written)
    with storage.open_input(written) as source:
        assert pq.ParquetFile(source).read().equals(table)


@pytest.mark.parametrize("target", ["local", "s3"])
def test_copy_dir_delete_dir_and_local_dir(root, target, tmp_path, request):
    for name in ("config.json", "sub/w.bin"):
        storage.write_text(storage.join(root, "src", name), name)
    base = str(tmp_path / "dst") if target == "local" else request.getfixturevalue("s3_prefix")
    copy = storage.join(base, "copy")
    storage.copy_dir(storage.join(root, "src"), copy)
    assert storage.read_text(storage.join(copy, "sub", "w.bin")) == "sub/w.bin"
    with storage.local_dir(copy) as local:
        assert storage.read_text(f"{local}/config.json") == "config.json"
        assert not storage.is_remote(local)
    storage.delete_dir(copy)
    storage.delete_dir(copy)  # already gone: no error
    assert not storage.exists(storage.join(copy, "config.json"))
    with pytest.raises(FileNotFoundError):
        storage.copy_dir(storage.join(root, "missing"), copy)


def test_uris_with_credentials_are_refused_without_echoing_them(s3_endpoint):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for uri in (
        f"s3://AKIA:{secret}@recsys-test/x",
        f"s3://recsys-test/x?secret_key={secret}",
    ):
        with pytest.raises(ValueError) as error:
            storage.resolve(uri)
        assert secret not in str(error.value)


def test_s3_filesystem_pickles_without_the_secret(s3_prefix):
    """What Ray ships to workers (and might log) holds no credential: each reads the env."""
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    fs, inner = storage.resolve(s3_prefix)
    assert inner.startswith("recsys-test/")
    blob = pickle.dumps(fs)
    assert secret.encode() not in blob and os.environ["AWS_ACCESS_KEY_ID"].encode() not in blob
    assert secret not in repr(fs)
