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
import threading
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .errors import UserError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def uri_problem(uri: str, models: bool = False) -> str | None:
    """Why ``uri`` cannot name a location here, as a phrase to follow it, or None if it can.

    Shape only, nothing is accessed: a local path, ``file:///absolute/path`` or
    ``s3://bucket[/prefix]`` with a valid bucket name; any other scheme is refused. With
    ``models=True`` (keys that hold a model) a registry reference ``models://NAME@ALIAS`` or
    ``models://NAME/VERSION`` is a location too (see rnnlib.registry)."""
    uri = str(uri)
    if not uri.strip():
        return "is empty; give a local folder, file:///absolute/path or s3://bucket/prefix"
    m = _SCHEME.match(uri)
    if m is None:
        return None  # a local path
    if m.group(1) == "models":
        if not models:
            return ("is a model registry reference, which only the keys that hold a model take; give a local "
                    "folder, file:///absolute/path or s3://bucket/prefix")
        from .registry import ref_problem  # here: the registry builds on this module

        return ref_problem(uri)
    if m.group(1) == "s3":
        bucket = uri[len("s3://"):].partition("/")[0]
        if not bucket:
            return "has no bucket; write s3://BUCKET/PREFIX"
        if not _BUCKET.fullmatch(bucket):
            return (f"has an invalid bucket name {bucket!r}; a bucket name is 3-63 lowercase letters, digits, "
                    "dots and hyphens, starting and ending with a letter or digit")
        return None
    if m.group(1) == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            return "is not an absolute file:// URI; write file:///absolute/path, or give the path alone"
        return None
    return f"uses {m.group(1)}://, which is not supported; use a local path, file:///absolute/path or s3://bucket/prefix"


def endpoint(explicit: str | None = None) -> str | None:
    ep = explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    refuse_credentials(ep, "endpoint_url (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    return ep


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a URI; local paths become absolute."""
    uri = str(uri)
    refuse_credentials(uri)  # every read and write passes here: a last guard behind config validation
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
    uri, msg = redact(uri), str(err)
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


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}")  # .<name>.<uuid hex>, or .<name>.<pid>.<uuid hex>


def temporary_name(name: str) -> str:
    """The hidden name a local write is staged under before it is moved or linked into place."""
    return f".{name}.{uuid.uuid4().hex}"


def is_temporary(path: str) -> bool:
    """A file staged by ``write_bytes`` or ``create_if_absent`` (hidden: readers that list a
    folder, pyarrow's and Spark's among them, skip it): a write in flight, or a killed writer's."""
    return _TEMPORARY.fullmatch(posixpath.basename(path)) is not None


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write a whole object: on S3 one PUT; locally a temporary file renamed into place, so a
    reader never sees a half-written file."""
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    target = path if is_s3(uri) else f"{posixpath.dirname(path)}/{temporary_name(posixpath.basename(path))}"
    with fs.open_output_stream(target) as f:
        f.write(data)
    if target != path:
        fs.move(target, path)


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
               endpoint_url: str | None = None, missing_ok: bool = False) -> list[tuple[str, int, float]]:
    """Files under a folder/prefix (or the file itself) as sorted ``(uri, size, mtime)``; where
    nothing is there, [] with ``missing_ok``, else a ``UserError``."""
    fs, path = filesystem(uri, endpoint_url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(str(uri), info.size, mtime(info))]
    if info.type == pafs.FileType.NotFound:
        if missing_ok:
            return []
        raise UserError(f"{uri}: no such file or folder")
    base = str(uri).rstrip("/")
    out = []
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        name = f.path[len(path):].lstrip("/")
        if f.type == pafs.FileType.File and (not suffixes or name.lower().endswith(suffixes)):
            out.append((f"{base}/{name}", f.size, mtime(f)))
    return sorted(out)


def list_folders(uri: str, endpoint_url: str | None = None) -> list[str]:
    """Names of the folders (on S3: the common prefixes) directly under ``uri``, sorted; [] where
    nothing is there."""
    fs, path = filesystem(uri, endpoint_url)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(f.path.rstrip("/")) for f in infos if f.type == pafs.FileType.Directory)


def mtime(info: pafs.FileInfo) -> float:
    """A listing's modification time as seconds (0 where the store gives none)."""
    return info.mtime.timestamp() if info.mtime is not None else 0.0


_CLIENT_LOCK = threading.Lock()


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client with standard retries; credentials from the standard AWS chain.

    Made under a lock: boto3's default session is not safe to make clients from in several
    threads at once (a client, once made, is)."""
    import boto3
    from botocore.config import Config

    with _CLIENT_LOCK:
        return boto3.client("s3", endpoint_url=endpoint(endpoint_url),
                            config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def create_if_absent(uri: str, data: bytes, endpoint_url: str | None = None) -> bool:
    """Write ``data`` at ``uri`` only if nothing is there; True if this call created it.

    S3: ``put_object(IfNoneMatch="*")`` (the store decides, atomically). Local: a hard link of
    a finished temporary file, which fails if the target exists.
    """
    refuse_credentials(uri)
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
    tmp = target.with_name(temporary_name(f"{target.name}.{os.getpid()}"))  # unique across threads too
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


# ---------------------------------------------------------------------------------------------
# Credentials never ride in a URI: refused where URIs enter, redacted wherever one is printed

AWS_CHAIN = ("credentials come from the AWS chain only: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
             "in the environment, ~/.aws/credentials, or the node's instance profile / IRSA role")
_URIS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")  # URIs inside a message


def _userinfo_end(uri: str) -> int | None:
    """Index just past the user info of ``scheme://user:secret@host/...``; None if there is none.

    An AWS secret key may hold '/', which ends the authority early (``s3://KEY:SEC/RET@bucket``
    parses as host ``KEY:SEC``), so a ':' in an s3 authority, or a port that is not a number,
    counts as user info too, up to the first '@' (or the whole rest when there is none)."""
    m = _SCHEME.match(uri)
    if not m:
        return None
    start, rest = m.end(), uri[m.end():]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        if m.group(1).lower() == "models" and ":" not in authority[:authority.rindex("@")]:
            return None  # models://NAME@ALIAS: a registry alias, not user info
        return start + authority.rindex("@") + 1
    if ":" not in authority or authority.startswith("["):  # no user info; or an IPv6 host [::1]:9000
        return None
    port = authority.rpartition(":")[2]
    if not uri.lower().startswith("s3://") and (port == "" or port.isdigit()):  # host:port
        return None
    at = rest.find("@")
    return start + at + 1 if at >= 0 else len(uri)


def has_credentials(uri: str) -> bool:
    """True if ``uri`` carries user info (``s3://KEY:SECRET@bucket/p``)."""
    return isinstance(uri, str) and _userinfo_end(uri.strip()) is not None


def redact(uri: str) -> str:
    """``uri``, or a message holding URIs, with each URI's user info replaced by ``***``:
    ``s3://KEY:SECRET@bucket/p`` -> ``s3://***@bucket/p``. Safe to print, log or write."""
    def one(m: re.Match) -> str:
        u = m.group()
        end = _userinfo_end(u)
        if end is None:
            return u
        return u[:_SCHEME.match(u).end()] + ("***@" if u[end - 1] == "@" else "***") + u[end:]

    return _URIS.sub(one, str(uri))


def credentials_problem(key: str, uri: object, fix: str = AWS_CHAIN) -> str | None:
    """The message refusing a URI with credentials in it (naming ``key``, never the secret), or None."""
    if not has_credentials(uri):
        return None
    return (f"{key}: {redact(uri)} has credentials in it (user info before '@'), which would end up in logs, "
            f"metrics.json, bundles and manifests; remove them: {fix}")


def refuse_credentials(uri: object, key: str = "URI", fix: str = AWS_CHAIN) -> None:
    """Raise ``UserError`` (exit 2, no traceback) if ``uri`` carries credentials."""
    if problem := credentials_problem(key, uri, fix):
        raise UserError(problem)
