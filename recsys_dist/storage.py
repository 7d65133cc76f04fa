"""Paths that may be local or on object storage (``s3://``), resolved in one place.

Everything that touches files goes through :func:`resolve` so that a local path and an
``s3://bucket/key`` behave the same. S3 endpoint, region and credentials come from the
standard AWS environment (``AWS_ENDPOINT_URL`` for MinIO-style stores); nothing is logged.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def resolve(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path within it)`` for a local path or a URI."""
    text = str(path)
    if not is_remote(text):
        return pafs.LocalFileSystem(), str(Path(text).resolve())
    return pafs.FileSystem.from_uri(text)


def join(base: str | Path, *parts: str) -> str:
    """Join path parts without breaking URIs (``Path`` would fold ``s3://`` into ``s3:/``)."""
    text = str(base)
    return posixpath.join(text, *parts) if is_remote(text) else str(Path(text, *parts))


def exists(path: str | Path) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def list_files(path: str | Path, suffix: str) -> list[str]:
    """Files under ``path`` (or ``path`` itself) ending in ``suffix``, sorted, hidden ones skipped.

    Returned in the same form as given (URIs stay URIs), so they can be shown to the user.
    """
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [str(path)]
    found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    names = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(suffix)
        and not any(part.startswith((".", "_")) for part in f.path[len(inner) :].split("/"))
    )
    if not is_remote(path):
        return names
    scheme = str(path).split("://", 1)[0]
    return [f"{scheme}://{name}" for name in names]


def write_json(path: str | Path, payload: Any) -> None:
    fs, inner = resolve(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(path: str | Path) -> Any:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as stream:
        return json.loads(stream.read().decode())


def make_dirs(path: str | Path) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def total_size(files: list[str]) -> int:
    """Bytes in ``files`` (one listing call per file; used to size shuffles)."""
    total = 0
    for path in files:
        fs, inner = resolve(path)
        total += fs.get_file_info(inner).size or 0
    return total
