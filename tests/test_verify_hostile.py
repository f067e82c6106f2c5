"""`rnnjobs verify` on published runs that were damaged, tampered with, or not published by
rnnjobs at all: exit 1, no traceback, every problem named on a line of its own."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from jobhelpers import cli

from rnnlib import publish, storage

MANIFEST = "manifest-att1.json"
PART = "forecasts/part-att1-0.parquet"
DF = pd.DataFrame({"ticker": ["AAA", "AAA", "BBB"], "step": [1, 2, 1], "forecast": [1.0, 1.5, 2.0]})


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A run as rnnjobs publishes it: parts, then the manifest, then _SUCCESS."""
    run = tmp_path_factory.mktemp("out") / "run=abc"
    files = [publish.write_part(str(run), PART, DF, "forecasts"),
             publish.write_part(str(run), "rejects.parquet", DF.head(0), "rejects")]
    counts = {"series_scored": 2, "forecast_rows": 3}
    assert publish.commit(str(run), "att1", {"run_id": "abc", "attempt": "att1", "counts": counts, "files": files})
    return run


def manifest(run: Path) -> dict:
    return json.loads((run / MANIFEST).read_text())


def commit(run: Path, data: bytes | dict, name: str = MANIFEST) -> None:
    """Rewrite the manifest and a _SUCCESS that commits it, as a writer that got it wrong would."""
    data = data if isinstance(data, bytes) else json.dumps(data).encode()
    (run / name).write_bytes(data)
    (run / "_SUCCESS").write_text(json.dumps({"manifest": name, "sha256": hashlib.sha256(data).hexdigest()}))


def edit_entry(change):
    def apply(run):
        m = manifest(run)
        change(m["files"][0])
        commit(run, m)
    return apply


def success_folder(run):
    (run / "_SUCCESS").unlink()
    (run / "_SUCCESS").mkdir()
    (run / "_SUCCESS" / "part-0").write_text("")


def not_parquet(run):
    data = b"ticker,step,forecast\nAAA,1,1.0\n"
    (run / PART).write_bytes(data)
    m = manifest(run)
    m["files"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    commit(run, m)


def outside(run):
    """An entry that points out of the run folder, at a file that matches it."""
    shutil.copy(run / PART, run.parent / "elsewhere.parquet")
    edit_entry(lambda f: f.update(path="../elsewhere.parquet"))(run)


def part_folder(run):
    (run / PART).unlink()
    (run / PART).mkdir()


def unlisted(run):
    shutil.copy(run / PART, run / "forecasts" / "part-att0-stale.parquet")


def tampered_manifest(run):
    """The manifest edited after the commit (a row count raised), _SUCCESS left as it was."""
    m = manifest(run)
    m["files"][0]["rows"] += 1
    (run / MANIFEST).write_text(json.dumps(m))


def manifest_folder(run):
    (run / MANIFEST).unlink()
    (run / MANIFEST).mkdir()


def listed_twice(run):
    m = manifest(run)
    m["files"].append(dict(m["files"][0]))
    commit(run, m)


CASES = {
    "empty_success": (lambda r: (r / "_SUCCESS").write_bytes(b""), ["_SUCCESS: empty. Spark and Hadoop"]),
    "success_a_folder": (success_folder, ["_SUCCESS: a folder, not the marker file"]),
    "success_not_json": (lambda r: (r / "_SUCCESS").write_text("{manifest"), ["_SUCCESS: not valid JSON"]),
    "success_an_array": (lambda r: (r / "_SUCCESS").write_text("[]"), ["_SUCCESS: an array"]),
    "success_without_keys": (lambda r: (r / "_SUCCESS").write_text("{}"),
                             ["_SUCCESS: manifest: missing", "_SUCCESS: sha256: missing"]),
    "success_names_outside": (lambda r: commit(r, manifest(r), "../manifest-att1.json"),
                              ["is not a file name in the run folder"]),
    "manifest_missing": (lambda r: (r / MANIFEST).unlink(), [f"{MANIFEST}: named by _SUCCESS but missing"]),
    "manifest_bad_json": (lambda r: commit(r, b'{"files": [}'), [f"{MANIFEST}: not valid JSON"]),
    "manifest_an_array": (lambda r: commit(r, b"[]"), [f"{MANIFEST}: an array, expected a manifest"]),
    "manifest_without_files": (lambda r: commit(r, {"run_id": "abc"}), [f"{MANIFEST}: files: missing"]),
    "files_an_object": (lambda r: commit(r, {"files": {}}), [f"{MANIFEST}: files: {{}} is an object"]),
    "entry_a_string": (lambda r: commit(r, {"files": [PART]}), [f"{MANIFEST}: files[0]: a string, expected"]),
    "entry_without_bytes": (edit_entry(lambda f: f.pop("bytes")), [f"files[0].bytes: missing ({PART})"]),
    "entry_without_path": (edit_entry(lambda f: f.pop("path")),
                           ["files[0].path: missing", f"{PART}: in the run folder but not in the manifest"]),
    "entry_rows_a_string": (edit_entry(lambda f: f.update(rows="3")), ["files[0].rows: '3' is a string"]),
    "entry_path_outside": (outside, ["files[0].path: '../elsewhere.parquet' is not a path inside the run folder"]),
    "entry_listed_twice": (listed_twice, [f"files[2].path: '{PART}' is listed more than once"]),
    "part_not_parquet": (not_parquet, [f"{PART}: not a Parquet file"]),
    "part_a_folder": (part_folder, [f"{PART}: a folder, not the file the manifest lists"]),
    "part_unlisted": (unlisted, ["forecasts/part-att0-stale.parquet: in the run folder but not in the manifest"]),
    "manifest_tampered": (tampered_manifest, [f"{MANIFEST}: sha256 differs from the one _SUCCESS committed"]),
    "manifest_a_folder": (manifest_folder, [f"{MANIFEST}: named by _SUCCESS but a folder"]),
    "part_missing": (lambda r: (r / PART).unlink(), [f"{PART}: missing"]),
    "part_rows_differ": (edit_entry(lambda f: f.update(rows=len(DF) + 1)),
                         [f"{PART}: {len(DF)} rows, manifest says {len(DF) + 1}"]),
    "part_bytes_differ": (edit_entry(lambda f: f.update(bytes=1)),
                          [f"{PART}: {len(publish.parquet_bytes(DF))} bytes, manifest says 1"]),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_run_fails_verify_naming_each_problem(case, published, tmp_path):
    change, expected = CASES[case]
    run = tmp_path / "run=abc"
    shutil.copytree(published, run)
    change(run)
    code, out = cli("verify", run)
    assert "Traceback" not in out, out
    assert code == 1, out
    lines = out.splitlines()
    for text in expected:  # each problem on a line of its own
        assert any(text in line for line in lines), (text, out)
    assert f"{len([x for x in lines if x.startswith('  - ')])} problem(s)" in out, out


STORE_ERRORS = {  # what the store refuses (a permission, a network error), and the line verify gives for it
    "part_unreadable": ("read_bytes", PART, [f"{PART}: cannot be read"]),
    "manifest_unreadable": ("read_bytes", MANIFEST, [f"{MANIFEST}: cannot be read"]),
    "folder_unlistable": ("list_files", "run=abc", ["the run folder cannot be listed"]),
}


@pytest.mark.parametrize("case", STORE_ERRORS)
def test_store_errors_fail_verify_naming_what_failed(case, published, monkeypatch):
    """Root reads any local file, so the store's refusal is made by hand: one storage call fails
    with PermissionError for one name, everything else reads as usual."""
    call, name, expected = STORE_ERRORS[case]
    real = getattr(storage, call)

    def refusing(uri, *args, **kwargs):
        if str(uri).rstrip("/").endswith(name):
            raise PermissionError(13, "Permission denied", str(uri))
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(storage, call, refusing)
    code, out = cli("verify", published)
    assert code == 1 and "Traceback" not in out, out
    for text in expected:
        assert any(text in line for line in out.splitlines()), (text, out)


def test_published_run_verifies(published):
    code, out = cli("verify", published)
    assert code == 0 and "OK, 2 file(s) match the manifest" in out, out


def test_readers_of_a_damaged_run_get_an_error_not_a_traceback(published, tmp_path):
    run = tmp_path / "run=abc"
    shutil.copytree(published, run)
    (run / "_SUCCESS").write_bytes(b"")  # as Spark writes it
    code, out = cli("report", run, "--out", tmp_path / "report")
    assert code == 2 and "_SUCCESS: empty" in out and "Traceback" not in out, out
