"""Score runs filed by date, and the LATEST pointers readers follow (rnnlib.publish), locally and
on the moto S3 server: a pointer only ever names a published run, a backfill of an earlier date
leaves the overall LATEST alone, and verify/report accept a pointer; a damaged pointer is a clear
error (exit 2), never a run read from the wrong place."""

import json

import pandas as pd
import pytest
from conftest import ROOT
from jobhelpers import cli

from rnnlib import publish, storage
from rnnlib.errors import UserError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    _, _, s3 = request.getfixturevalue("moto_s3")
    bucket = f"latest-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/forecasts"


def publish_run(root: str, as_of: str, rid: str, rows: int = 3) -> str:
    run = publish.dated_run(root, as_of, rid)
    files = [publish.write_part(run, f"forecasts/part-{rid}.parquet", pd.DataFrame({"x": range(rows)}), "forecasts")]
    assert publish.commit(run, "att", {"files": files, "created": f"{as_of}T23:00:00+00:00"})
    return run


def test_latest_pointers_follow_dates_and_backfills_do_not_move_the_top(root):
    a = publish_run(root, "2026-11-25", "aaa")
    assert publish.point_latest(root, "2026-11-25", "aaa") == [
        storage.join(root, "as_of=2026-11-25", "LATEST"), storage.join(root, "LATEST")]
    b = publish_run(root, "2026-11-26", "bbb")
    publish.point_latest(root, "2026-11-26", "bbb")
    assert publish.resolve(root) == publish.resolve(storage.join(root, "LATEST")) == b

    c = publish_run(root, "2026-11-20", "ccc")  # a backfill of an earlier date
    assert publish.point_latest(root, "2026-11-20", "ccc") == [storage.join(root, "as_of=2026-11-20", "LATEST")]
    assert publish.resolve(root) == b
    assert publish.resolve(storage.join(root, "as_of=2026-11-20")) == c

    d = publish_run(root, "2026-11-26", "ddd", rows=5)  # the same date again (a new model): it is the date's latest
    publish.point_latest(root, "2026-11-26", "ddd")
    assert publish.resolve(root) == publish.resolve(storage.join(root, "as_of=2026-11-26")) == d
    assert publish.dated_runs(root) == {"2026-11-20": c, "2026-11-25": a, "2026-11-26": d}
    assert len(publish.read_kind(publish.resolve(root))) == 5

    # a run folder resolves to itself; the pointer's content says which run and when
    assert publish.resolve(a) == a
    top = json.loads(storage.read_bytes(storage.join(root, "LATEST")))
    assert top == {"run": "as_of=2026-11-26/run=ddd", "as_of": "2026-11-26", "published": "2026-11-26T23:00:00+00:00"}


def test_a_pointer_never_names_an_unpublished_run(root):
    run = publish.dated_run(root, "2026-11-27", "eee")
    publish.write_part(run, "forecasts/part-1.parquet", pd.DataFrame({"x": [1]}), "forecasts")  # no commit
    with pytest.raises(UserError, match="not published"):
        publish.point_latest(root, "2026-11-27", "eee")
    assert not storage.exists(storage.join(root, "LATEST"))


def test_verify_through_a_pointer_and_damaged_pointers(tmp_path):
    root = str(tmp_path / "out")
    run = publish_run(root, "2026-11-25", "aaa")
    publish.point_latest(root, "2026-11-25", "aaa")
    code, out = cli("verify", root)
    assert code == 0 and f"-> {run}" in out and "OK, 1 file(s)" in out
    code, out = cli("verify", f"{root}/as_of=2026-11-25/LATEST")
    assert code == 0 and f"-> {run}" in out

    pointer = tmp_path / "out" / "LATEST"
    for content, expected in [(b"as_of=2026-11-25/run=aaa", "not JSON"),
                              (json.dumps({"run": "../../etc/run=x"}).encode(), "not a LATEST pointer"),
                              (json.dumps({"run": "as_of=2026-11-25/manifest.json"}).encode(), "not a LATEST pointer"),
                              (json.dumps(["run=aaa"]).encode(), "not a LATEST pointer")]:
        pointer.write_bytes(content)
        code, out = cli("verify", root)
        assert code == 2 and expected in out and "Traceback" not in out, out
        assert str(pointer) in out


def test_local_writes_leave_no_temporary_files(tmp_path):
    uri = str(tmp_path / "d" / "f.json")
    storage.write_bytes(uri, b"1")
    storage.write_bytes(uri, b"22")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.json"]
    assert storage.read_bytes(uri) == b"22"


def test_as_of_today_is_the_date_where_the_exchange_is():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from jobs.score import load_score_config
    from rnnlib.errors import ConfigError

    config = str(ROOT / "jobs/configs/forecast-score.yaml")
    for tz in ("Asia/Tokyo", "America/New_York", "Pacific/Honolulu"):  # a day apart for part of every day
        before = datetime.now(ZoneInfo(tz)).date().isoformat()
        got = load_score_config(config, ["as_of=today", f"exchange_tz={tz}"]).as_of
        assert got in (before, datetime.now(ZoneInfo(tz)).date().isoformat())
    assert load_score_config(config, ["as_of=2026-11-27"]).as_of == "2026-11-27"
    with pytest.raises(ConfigError, match="exchange_tz.*Mars/Olympus.*IANA"):
        load_score_config(config, ["as_of=today", "exchange_tz=Mars/Olympus"])
    with pytest.raises(ConfigError, match="as_of.*yesterday"):
        load_score_config(config, ["as_of=yesterday"])
