"""Publishing batch output atomically, and verifying what was published.

A run writes its parts under ``<output>/run=<run_id>/``, then ``manifest-<attempt>.json``
(every file with bytes, rows and sha256, counts, model, config, versions), then ``_SUCCESS``,
created only if absent and naming the manifest it commits with that manifest's sha256.
Readers trust only what a ``_SUCCESS`` manifest lists. Two attempts racing to commit: exactly
one creates ``_SUCCESS``; the other learns it lost and removes the files only it wrote (their
names carry its attempt id; shared names such as rejects.parquet hold the same bytes).

Runs are filed by date: ``<output>/as_of=YYYY-MM-DD/run=<run_id>/``. After a commit, pointers
tell readers which run is current: ``<output>/as_of=<date>/LATEST`` (the newest published run of
that date) and ``<output>/LATEST`` (the run of the latest date; a backfill of an earlier date does
not move it). A pointer is a small JSON written in one piece, only after ``_SUCCESS``, so it
never names an unpublished run; ``resolve`` follows one (verify and report accept a pointer;
the scorecard reads every date's).

Reading back trusts nothing: an empty ``_SUCCESS`` (what Spark and Hadoop write), a folder in its
place, JSON that does not parse, a manifest without the fields it needs, a part that is not
Parquet, and a file in the run folder that the manifest does not list are each a named problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import UserError
from .jsoncheck import Problems, an, json_type

SUCCESS = "_SUCCESS"
LATEST = "LATEST"
STALE_TEMP_S = 3600  # a temporary file older than this was left by a killed writer


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
    return storage.kind(storage.join(run_uri, SUCCESS), endpoint_url) == "file"


def dated_run(output: str, as_of: str, run_id: str) -> str:
    """Where a run of ``as_of`` (YYYY-MM-DD) is published."""
    return storage.join(output, f"as_of={as_of}", f"run={run_id}")


def point_latest(output: str, as_of: str, run_id: str, endpoint_url: str | None = None) -> list[str]:
    """After a commit: point ``as_of=<date>/LATEST`` at this run, and ``<output>/LATEST`` too unless
    it names a later date. Returns the pointers written. Writes are whole-object (an S3 PUT, a
    rename locally), so a reader sees the old pointer or the new one, never a torn one."""
    run = dated_run(output, as_of, run_id)
    if not is_published(run, endpoint_url):
        raise UserError(f"{run}: not published; a pointer may only name a published run")
    created = read_manifest(run, endpoint_url)[1].get("created")

    def point(folder: str, run_path: str) -> str:
        uri = storage.join(folder, LATEST)
        storage.write_bytes(uri, json.dumps({"run": run_path, "as_of": as_of, "published": created}).encode(),
                            endpoint_url)
        return uri

    written = [point(storage.join(output, f"as_of={as_of}"), f"run={run_id}")]
    top = storage.join(output, LATEST)
    current = _pointer(top, endpoint_url) if storage.exists(top, endpoint_url) else None
    if current is None or str(current.get("as_of", "")) <= as_of:
        written.append(point(output, f"as_of={as_of}/run={run_id}"))
    return written


def _pointer(uri: str, endpoint_url: str | None) -> dict:
    """A LATEST pointer's content, checked: ``run`` a path below the pointer's folder."""
    try:
        value = json.loads(storage.read_bytes(uri, endpoint_url).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{uri}: not a LATEST pointer rnnjobs writes (not JSON: {e})") from None
    run = value.get("run") if isinstance(value, dict) else None
    if not isinstance(run, str) or not _plain(run) or not run.split("/")[-1].startswith("run="):
        raise UserError(f'{uri}: not a LATEST pointer rnnjobs writes (expected {{"run": "...run=<id>", ...}})')
    return value


def resolve(uri: str, endpoint_url: str | None = None) -> str:
    """The run folder ``uri`` names: a run folder itself, a ``LATEST`` pointer, or a folder holding
    one (an output root, or one ``as_of=<date>`` folder)."""
    uri = str(uri).rstrip("/")
    if uri.endswith("/" + LATEST) or uri == LATEST:
        base, pointer = posixpath.dirname(uri) if "/" in uri else ".", uri
    elif is_published(uri, endpoint_url) or not storage.exists(storage.join(uri, LATEST), endpoint_url):
        return uri
    else:
        base, pointer = uri, storage.join(uri, LATEST)
    return storage.join(base, _pointer(pointer, endpoint_url)["run"])


def dated_runs(output: str, endpoint_url: str | None = None) -> dict[str, str]:
    """``{as_of: run folder}`` of every date under ``output`` that has a LATEST pointer: one listing
    of the date folders and one read per pointer (not a listing of every run's parts)."""
    out = {}
    for folder in storage.list_folders(output, endpoint_url):
        pointer = storage.join(output, folder, LATEST)
        if folder.startswith("as_of=") and storage.kind(pointer, endpoint_url) == "file":
            out[folder[len("as_of="):]] = storage.join(output, folder, _pointer(pointer, endpoint_url)["run"])
    return out


def read_kind(run_uri: str, kind: str = "forecasts", endpoint_url: str | None = None,
              manifest: dict | None = None) -> pd.DataFrame:
    """Every part of one kind that a published run's manifest lists, as one frame (``manifest``:
    the run's, if the caller has read it already)."""
    if manifest is None:
        _, manifest = read_manifest(run_uri, endpoint_url)
    parts = [pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(run_uri, f["path"]), endpoint_url)))
             for f in manifest["files"] if f["kind"] == kind]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


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
    """After a commit: delete files of failed attempts that the manifest does not list.

    A temporary file (``storage.is_temporary``) may be a write in flight: another attempt, still
    running, is about to move it into place; deleting it would crash that attempt rather than let
    it learn that it lost. Only one older than ``STALE_TEMP_S`` (a killed writer's) is removed; a
    younger one a killed writer left stays, hidden, and ``verify`` does not count it."""
    manifest_name, manifest = read_manifest(run_uri, endpoint_url)
    keep = {f["path"] for f in manifest["files"]} | {manifest_name, SUCCESS}
    now = time.time()
    removed = []
    for uri, _, modified in storage.list_files(run_uri, recursive=True, endpoint_url=endpoint_url):
        rel = uri[len(run_uri.rstrip("/")) + 1:]
        if storage.is_temporary(rel) and now - modified < STALE_TEMP_S:
            continue
        if rel not in keep:
            storage.delete(uri, endpoint_url)
            removed.append(rel)
    return removed


class ManifestError(UserError):
    """A published run's ``_SUCCESS`` or manifest cannot be trusted; carries every problem found."""

    def __init__(self, run_uri: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{run_uri}: {len(self.problems)} problem(s) with what {SUCCESS} commits:\n{lines}")


def read_manifest(run_uri: str, endpoint_url: str | None = None) -> tuple[str, dict]:
    """(manifest file name, manifest) of a published run; raises if unpublished, tampered with or
    malformed (``ManifestError`` naming every problem)."""
    name, manifest = _committed(run_uri, endpoint_url)
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError(run_uri, [f"{name}: {p}" for p in problems])
    return name, manifest


def _committed(run_uri: str, endpoint_url: str | None) -> tuple[str, dict]:
    """The manifest ``_SUCCESS`` names, checked against the sha256 it commits, parsed to a dict."""
    marker_uri = storage.join(run_uri, SUCCESS)
    what = storage.kind(marker_uri, endpoint_url)
    if what is None:
        raise UserError(f"{run_uri}: not published (no {SUCCESS}); the run did not finish, or this is "
                        "not a run=<id> folder")
    not_ours = "this run was not published by rnnjobs, or the marker was damaged"
    if what == "folder":
        raise ManifestError(run_uri, [f"{SUCCESS}: a folder, not the marker file rnnjobs writes; {not_ours}"])
    raw = _read(run_uri, SUCCESS, endpoint_url)
    if not raw.strip():
        raise ManifestError(run_uri, [
            f"{SUCCESS}: empty. Spark and Hadoop write an empty {SUCCESS}; rnnjobs writes one naming its "
            f"manifest and the manifest's sha256, so there is nothing to verify against: {not_ours}"])
    marker = _json(run_uri, SUCCESS, raw, f'the marker rnnjobs writes ({{"manifest": ..., "sha256": ...}}); {not_ours}')
    p = Problems()
    name = p.take(marker, "manifest", "string", f"{SUCCESS}: manifest")
    digest = p.take(marker, "sha256", "sha256", f"{SUCCESS}: sha256")
    if name is not None and not _plain(name, nested=False):
        p.append(f"{SUCCESS}: manifest {name!r} is not a file name in the run folder")
    if p:
        raise ManifestError(run_uri, p)
    what = storage.kind(storage.join(run_uri, name), endpoint_url)
    if what != "file":
        raise ManifestError(run_uri, [f"{name}: named by {SUCCESS} but " + ("a folder" if what else "missing")])
    data = _read(run_uri, name, endpoint_url)
    if hashlib.sha256(data).hexdigest() != digest:
        raise ManifestError(run_uri, [f"{name}: sha256 differs from the one {SUCCESS} committed "
                                      "(modified or corrupted after the commit)"])
    return name, _json(run_uri, name, data, "a manifest (an object with files, counts, ...)")


def _read(run_uri: str, name: str, endpoint_url: str | None) -> bytes:
    uri = storage.join(run_uri, name)
    try:
        return storage.read_bytes(uri, endpoint_url)
    except OSError as e:
        raise ManifestError(run_uri, [f"{name}: cannot be read ({storage.access_error(uri, e, endpoint_url)})"]) \
            from None


def _json(run_uri: str, name: str, data: bytes, expected: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(run_uri, [f"{name}: not valid JSON ({e}); expected {expected}"]) from None
    if not isinstance(value, dict):
        raise ManifestError(run_uri, [f"{name}: {an(json_type(value))}, expected {expected}"])
    return value


def _plain(path: str, nested: bool = True) -> bool:
    """A relative path inside the run folder: no '..', no leading '/', no backslash."""
    parts = path.split("/")
    return (bool(path) and "\\" not in path and (nested or len(parts) == 1)
            and all(part not in ("", ".", "..") for part in parts))


def manifest_problems(manifest: dict) -> list[str]:
    """What a manifest lacks for a reader or ``verify``: ``files``, each with path, kind, rows,
    bytes and sha256 of the right types, paths inside the run folder and listed once."""
    p = Problems()
    files = p.take(manifest, "files", "array")
    seen = set()
    for i, f in enumerate(files or []):
        p += _entry_problems(i, f)
        path = f.get("path") if isinstance(f, dict) else None
        if isinstance(path, str):
            if path in seen:
                p.append(f"files[{i}].path: {path!r} is listed more than once")
            seen.add(path)
    return list(p)


def _entry_problems(i: int, f) -> list[str]:
    where = f"files[{i}]"
    if not isinstance(f, dict):
        return [f"{where}: {an(json_type(f))}, expected an object (path, kind, rows, bytes, sha256)"]
    p = Problems()
    path = p.take(f, "path", "string", f"{where}.path")
    if path is not None and not _plain(path):
        p.append(f"{where}.path: {path!r} is not a path inside the run folder")
    p.take(f, "kind", "string", f"{where}.kind")
    p.take(f, "rows", "integer", f"{where}.rows", lo=0)
    p.take(f, "bytes", "integer", f"{where}.bytes", lo=0)
    p.take(f, "sha256", "sha256", f"{where}.sha256")
    return [line if not isinstance(path, str) or repr(path) in line else f"{line} ({path})" for line in p]


@dataclass
class Verification:
    run_uri: str
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(run_uri: str, endpoint_url: str | None = None) -> Verification:
    """Check what ``_SUCCESS`` commits: the manifest's sha256 and fields, then every file it lists
    (present, bytes, sha256, Parquet rows), then that the run folder holds nothing it does not list."""
    v = Verification(run_uri)
    try:
        name, manifest = _committed(run_uri, endpoint_url)
    except ManifestError as e:
        v.problems += e.problems
        return v
    except UserError as e:
        v.problems.append(str(e))
        return v
    v.problems += [f"{name}: {p}" for p in manifest_problems(manifest)]
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    listed = {name, SUCCESS} | {f["path"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)}
    for i, f in enumerate(files):
        if not _entry_problems(i, f):
            v.checked += 1
            v.problems += _file_problems(run_uri, f, endpoint_url)
    v.problems += _unlisted(run_uri, listed, endpoint_url)
    return v


def _file_problems(run_uri: str, f: dict, endpoint_url: str | None) -> list[str]:
    path, uri = f["path"], storage.join(run_uri, f["path"])
    try:
        data = storage.read_bytes(uri, endpoint_url)
    except UserError:
        return [f"{path}: missing"]
    except OSError as e:  # a folder in its place, permissions, the store
        if storage.kind(uri, endpoint_url) == "folder":
            return [f"{path}: a folder, not the file the manifest lists"]
        return [f"{path}: cannot be read ({storage.access_error(uri, e, endpoint_url)})"]
    out = []
    if len(data) != f["bytes"]:
        out.append(f"{path}: {len(data)} bytes, manifest says {f['bytes']}")
    if hashlib.sha256(data).hexdigest() != f["sha256"]:
        return out + [f"{path}: sha256 differs from the manifest (modified or corrupted)"]
    try:
        rows = pq.read_metadata(io.BytesIO(data)).num_rows
    except Exception as e:  # ArrowInvalid, or whatever else a file that is not Parquet makes it raise
        return out + [f"{path}: not a Parquet file ({_first_line(e)})"]
    if rows != f["rows"]:
        out.append(f"{path}: {rows} rows, manifest says {f['rows']}")
    return out


def _unlisted(run_uri: str, listed: set[str], endpoint_url: str | None) -> list[str]:
    """Files in the run folder the manifest does not list: a reader that globs the folder reads them
    (not a temporary file, which is hidden from it; see ``clean_unlisted``)."""
    base = len(run_uri.rstrip("/")) + 1
    try:
        found = storage.list_files(run_uri, recursive=True, endpoint_url=endpoint_url)
    except (UserError, OSError) as e:
        return [f"the run folder cannot be listed ({e})"]
    return [f"{uri[base:]}: in the run folder but not in the manifest; readers that trust the manifest skip it, "
            "but one that globs the folder would read it" for uri, _, _ in found
            if uri[base:] not in listed and not storage.is_temporary(uri)]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def part_name(kind: str, attempt: str, key: str) -> str:
    """Deterministic within an attempt, so a retried batch overwrites its own part."""
    return posixpath.join(kind, f"part-{attempt}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet")
