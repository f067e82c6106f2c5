"""URIs in one place: a local path, ``file://`` or ``s3://bucket/prefix``.

Bulk files go through ``pyarrow.fs`` (what Ray Train and Ray Data use). The S3 endpoint of an
S3-compatible store comes from the argument, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
Credentials come only from the standard AWS chain (environment, shared files, instance
profile or IRSA); nothing here reads or prints them.
"""

from __future__ import annotations

import os
import posixpath
import re
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


def access_error(uri: str, err: Exception, endpoint_url: str | None = None) -> str:
    """A user-facing message for a failed access to ``uri``: what went wrong and the fix.

    It quotes the store's error code only: never credentials, and never the raw message (which
    can hold request ids and signatures)."""
    msg = str(err)
    low = msg.lower()
    if not is_s3(uri):
        return f"{uri}: {getattr(err, 'strerror', None) or msg.splitlines()[0][:200]}"
    ep = endpoint(endpoint_url)
    where = f"the S3 endpoint {ep}" if ep else "S3"
    if "nosuchbucket" in low or "bucket does not exist" in low or "no such bucket" in low:
        return f"{uri}: the bucket does not exist; check the bucket name (and the endpoint: {where})"
    if any(k in low for k in ("invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken", "invalidtoken")):
        return (f"{uri}: the credentials were refused by {where}; check the AWS credentials (AWS_PROFILE, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or the node's role)")
    if "access denied" in low or "access_denied" in low or "accessdenied" in low or "forbidden" in low:
        return (f"{uri}: access denied by {where}; the credentials in use (AWS chain) may not read this "
                "bucket: check the bucket policy or the role, or set AWS_PROFILE")
    if "no credentials" in low or "unable to locate credentials" in low or "credentials" in low and "missing" in low:
        return f"{uri}: no AWS credentials found; set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role"
    if any(k in low for k in ("curl", "connect", "resolve host", "timed out", "timeout", "network")):
        return (f"{uri}: cannot reach {where}; check endpoint_url / AWS_ENDPOINT_URL_S3 and the network")
    code = re.search(r"(AWS Error|error code)[: ]+\[?([A-Za-z_ ]{3,40})", msg)
    return f"{uri}: cannot read from {where} ({code.group(2).strip() if code else type(err).__name__})"


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (also for local paths)."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def kind(uri: str, endpoint_url: str | None = None) -> str | None:
    """What is at ``uri``: "file", "folder", or None where nothing is."""
    fs, path = filesystem(uri, endpoint_url)
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(fs.get_file_info(path).type)


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


def list_files(uri: str, suffixes: tuple[str, ...] = (), recursive: bool = False,
               endpoint_url: str | None = None) -> list[tuple[str, int, float]]:
    """Files under a folder/prefix (or the file itself) as sorted ``(uri, size, mtime)``."""
    fs, path = filesystem(uri, endpoint_url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(str(uri), info.size, mtime(info))]
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{uri}: no such file or folder")
    base = str(uri).rstrip("/")
    out = []
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        name = f.path[len(path):].lstrip("/")
        if f.type == pafs.FileType.File and (not suffixes or name.lower().endswith(suffixes)):
            out.append((f"{base}/{name}", f.size, mtime(f)))
    return sorted(out)


def mtime(info: pafs.FileInfo) -> float:
    """A listing's modification time as seconds (0 where the store gives none)."""
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client with standard retries; credentials from the standard AWS chain."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint(endpoint_url),
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def create_if_absent(uri: str, data: bytes, endpoint_url: str | None = None) -> bool:
    """Write ``data`` at ``uri`` only if nothing is there; True if this call created it.

    S3: ``put_object(IfNoneMatch="*")`` (the store decides, atomically). Local: a hard link of
    a finished temporary file, which fails if the target exists.
    """
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, _, key = str(uri)[5:].partition("/")
        try:
            s3_client(endpoint_url).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
    target = Path(filesystem(uri)[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(data)}")
    tmp.write_bytes(data)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def delete(uri: str, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(uri, endpoint_url)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
