"""Publishing batch output atomically, and verifying what was published.

A run writes its parts under ``<output>/run=<run_id>/``, then ``manifest-<attempt>.json``
(every file with bytes, rows and sha256, counts, model, config, versions), then ``_SUCCESS``,
created only if absent and naming the manifest it commits with that manifest's sha256.
Readers trust only what a ``_SUCCESS`` manifest lists. Two attempts racing to commit: exactly
one creates ``_SUCCESS``; the other learns it lost and removes the files only it wrote (their
names carry its attempt id; shared names such as rejects.parquet hold the same bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import UserError

SUCCESS = "_SUCCESS"


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def write_part(run_uri: str, name: str, df: pd.DataFrame, kind: str, endpoint_url: str | None = None) -> dict:
    """Write one Parquet part; return its manifest entry."""
    data = parquet_bytes(df)
    storage.write_bytes(storage.join(run_uri, name), data, endpoint_url)
    return {"path": name, "kind": kind, "rows": len(df), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def is_published(run_uri: str, endpoint_url: str | None = None) -> bool:
    return storage.exists(storage.join(run_uri, SUCCESS), endpoint_url)


def commit(run_uri: str, attempt: str, manifest: dict, endpoint_url: str | None = None) -> bool:
    """Write this attempt's manifest, then try to create ``_SUCCESS``. True if this attempt won."""
    name = f"manifest-{attempt}.json"
    data = json.dumps(manifest, indent=1, default=str).encode()
    storage.write_bytes(storage.join(run_uri, name), data, endpoint_url)
    marker = json.dumps({"manifest": name, "sha256": hashlib.sha256(data).hexdigest()}).encode()
    won = storage.create_if_absent(storage.join(run_uri, SUCCESS), marker, endpoint_url)
    if not won:  # remove what only this attempt wrote (names carry the attempt id)
        for f in manifest["files"]:
            if attempt in f["path"]:
                storage.delete(storage.join(run_uri, f["path"]), endpoint_url)
        storage.delete(storage.join(run_uri, name), endpoint_url)
    return won


def clean_unlisted(run_uri: str, endpoint_url: str | None = None) -> list[str]:
    """After a commit: delete files of failed attempts that the manifest does not list."""
    manifest_name, manifest = read_manifest(run_uri, endpoint_url)
    keep = {f["path"] for f in manifest["files"]} | {manifest_name, SUCCESS}
    removed = []
    for uri, _, _ in storage.list_files(run_uri, recursive=True, endpoint_url=endpoint_url):
        rel = uri[len(run_uri.rstrip("/")) + 1:]
        if rel not in keep:
            storage.delete(uri, endpoint_url)
            removed.append(rel)
    return removed


def read_manifest(run_uri: str, endpoint_url: str | None = None) -> tuple[str, dict]:
    """(manifest file name, manifest) of a published run; raises if unpublished or tampered."""
    if not is_published(run_uri, endpoint_url):
        raise UserError(f"{run_uri}: not published (no {SUCCESS}); the run did not finish, or this is "
                        "not a run=<id> folder")
    marker = json.loads(storage.read_bytes(storage.join(run_uri, SUCCESS), endpoint_url))
    data = storage.read_bytes(storage.join(run_uri, marker["manifest"]), endpoint_url)
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise UserError(f"{run_uri}/{marker['manifest']}: sha256 differs from the one {SUCCESS} committed")
    return marker["manifest"], json.loads(data)


@dataclass
class Verification:
    run_uri: str
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(run_uri: str, endpoint_url: str | None = None) -> Verification:
    """Check every file the committed manifest lists: present, bytes, sha256, Parquet rows."""
    v = Verification(run_uri)
    try:
        _, manifest = read_manifest(run_uri, endpoint_url)
    except UserError as e:
        v.problems.append(str(e))
        return v
    for f in manifest["files"]:
        uri = storage.join(run_uri, f["path"])
        v.checked += 1
        try:
            data = storage.read_bytes(uri, endpoint_url)
        except UserError:
            v.problems.append(f"{f['path']}: missing")
            continue
        if len(data) != f["bytes"]:
            v.problems.append(f"{f['path']}: {len(data)} bytes, manifest says {f['bytes']}")
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            v.problems.append(f"{f['path']}: sha256 differs from the manifest (modified or corrupted)")
            continue
        rows = pq.read_metadata(io.BytesIO(data)).num_rows
        if rows != f["rows"]:
            v.problems.append(f"{f['path']}: {rows} rows, manifest says {f['rows']}")
    return v


def part_name(kind: str, attempt: str, key: str) -> str:
    """Deterministic within an attempt, so a retried batch overwrites its own part."""
    return posixpath.join(kind, f"part-{attempt}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet")
