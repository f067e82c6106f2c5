"""URIs in one place: a local path, ``file://`` or ``s3://bucket/prefix``.

Bulk files go through ``pyarrow.fs`` (what Ray Train and Ray Data use). The S3 endpoint of an
S3-compatible store comes from the argument, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
Credentials come only from the standard AWS chain (environment, shared files, instance
profile or IRSA); nothing here reads or prints them.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .errors import UserError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def endpoint(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a URI; local paths become absolute."""
    uri = str(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UserError(f"{uri}: no bucket; write s3://BUCKET/PREFIX")
        kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
                  "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        ep = endpoint(endpoint_url)
        if ep:
            e = urlparse(ep if "://" in ep else "https://" + ep)
            kwargs.update(endpoint_override=e.netloc, scheme=e.scheme)
        path = posixpath.join(parsed.netloc, parsed.path.lstrip("/")).rstrip("/")
        return pafs.S3FileSystem(**kwargs), path
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (also for local paths)."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint_url)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{uri}: not found") from None


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def upload_dir(local: str | Path, uri: str, endpoint_url: str | None = None) -> None:
    """Copy a local folder's files to ``uri`` (a folder), replacing same-named files."""
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download_dir(uri: str, local: str | Path, endpoint_url: str | None = None) -> Path:
    """Copy the folder at ``uri`` to a local folder; return the local path."""
    fs, path = filesystem(uri, endpoint_url)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise UserError(f"{uri}: no such folder")
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(Path(local).resolve()), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return Path(local)
