"""History and corpus sources: every layout gives the same series, every entry is read or named,
local and S3 (moto on 127.0.0.1) alike."""

import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT
from layouts import LAYOUTS, read_per_ticker, write_layout

from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import DataError, UserError
from rnnlib.sources import classify, list_source
from rnnlib.stocks import load_histories
from rnnlib.text import read_text

TICKERS = ("AOS", "APTV", "EBAY", "KO", "LNT")  # real flaws: high < low, too short, a spin-off, a halved close


@pytest.fixture(scope="module")
def raw():
    """The bundled files of TICKERS exactly as they are (flaws included), as text."""
    return read_per_ticker(sample_stocks_dir() / f"{t}_data.csv" for t in TICKERS)


def _load(src, **kw):
    return load_histories(src, min_rows=100, needed=("close", "volume"), **kw)


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory):
    return _load(write_layout(raw, tmp_path_factory.mktemp("per_ticker"), "per_ticker"))


@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay != "per_ticker"])
def test_every_layout_gives_the_same_series_and_rejects(layout, raw, reference, tmp_path):
    h = _load(write_layout(raw, tmp_path, layout))
    assert h.rows_in == reference.rows_in == sum(len(df) for df in raw.values())
    assert h.rows_in == h.rows_kept + h.rows_rejected
    assert sorted(h.series) == sorted(reference.series) == ["AOS", "EBAY", "KO", "LNT"]
    for t, df in reference.series.items():
        pd.testing.assert_frame_equal(h.series[t], df)
    key = lambda r: sorted(zip(r.ticker, r.date.fillna(""), r.rows, r.action, r.reason.str[:30]))
    assert key(h.rejects) == key(reference.rejects)


def test_a_bad_row_in_a_daily_partition_names_its_file_and_line(raw, tmp_path):
    write_layout(raw, tmp_path, "monthly_csv")
    f = tmp_path / "2016" / "2016-05.csv"
    lines = f.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("2016-05-10") and ",KO" in line)
    lines[i] = lines[i].replace(",KO", ",KO,extra")  # one field too many
    j = next(j for j, line in enumerate(lines) if line.startswith("2016-05-11") and ",KO" in line)
    parts = lines[j].split(",")
    parts[4] = "n/a"  # close
    lines[j] = ",".join(parts)
    f.write_text("\n".join(lines) + "\n")
    h = _load(tmp_path)
    assert h.rows_in == h.rows_kept + h.rows_rejected
    rej = h.rejects[(h.rejects.file == str(f)) & (h.rejects.ticker.fillna("KO") == "KO")]
    assert set(rej.row) == {i, j}  # data line = file line (header is line 0)
    assert "8 fields where the header has 7" in " ".join(rej.reason)
    assert "non-numeric, missing or infinite close: 'n/a'" in " ".join(rej.reason)
    assert len(h.series["KO"]) == len(raw["KO"]) - 2


def test_every_entry_is_read_or_named(raw, tmp_path):
    write_layout({"KO": raw["KO"]}, tmp_path, "per_ticker")
    (tmp_path / "notes.txt").write_text("not prices")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "KO.parquet.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.csv"
    outside.write_text("date,close\n2020-01-01,1\n")
    (tmp_path / "outside.csv").symlink_to(outside)
    h = _load(tmp_path)
    skipped = dict(zip(h.skipped_files().file.map(os.path.basename), h.skipped_files().reason))
    assert set(skipped) == {"notes.txt", "_SUCCESS", "KO.parquet.gz", "gone.csv", "outside.csv"}
    assert "suffix '.txt'" in skipped["notes.txt"] and ".csv" in skipped["notes.txt"]
    assert "marker" in skipped["_SUCCESS"]
    assert "dangling link" in skipped["gone.csv"] and "outside" in skipped["outside.csv"]
    assert list(h.series) == ["KO"] and "5 entries not read" in h.summary()


def test_classify_and_empty_sources(tmp_path):
    assert classify("A.CSV.GZ", (".csv",))[:2] == (".csv", "gzip")
    assert classify("part-0.parquet", (".parquet",))[:2] == (".parquet", None)
    with pytest.raises(DataError, match="no readable csv/tsv/parquet/pq files.*it is empty"):
        list_source(str(tmp_path))
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataError, match=r"a.json: not a data file"):
        list_source(str(tmp_path))


@pytest.fixture(scope="module")
def bucket(moto_s3, raw, tmp_path_factory):
    """The Hive layout and a two-file corpus on moto S3."""
    endpoint, _, client = moto_s3
    client.create_bucket(Bucket="sources")
    recent = {t: df[df.date >= "2017-06-01"] for t, df in raw.items()}  # 174 trading days: 174 files
    local = write_layout(recent, tmp_path_factory.mktemp("hive"), "hive_daily")
    for f in local.rglob("*.parquet"):
        client.upload_file(str(f), "sources", f"prices/{f.relative_to(local).as_posix()}")
    client.put_object(Bucket="sources", Key="prices/_SUCCESS", Body=b"")
    client.put_object(Bucket="sources", Key="corpus/a.txt", Body=b"First part.\n")
    client.put_object(Bucket="sources", Key="corpus/b.txt", Body="Zweiter Teil: äöü.\n".encode())
    return endpoint


def test_s3_prefix_loads_like_the_local_folder(bucket, raw, tmp_path):
    recent = {t: df[df.date >= "2017-06-01"] for t, df in raw.items()}
    reference = _load(write_layout(recent, tmp_path, "per_ticker"))
    h = _load("s3://sources/prices/")
    assert h.rows_in == reference.rows_in
    assert sorted(h.series) == sorted(reference.series) == ["AOS", "EBAY", "KO", "LNT"]
    for t, df in reference.series.items():
        pd.testing.assert_frame_equal(h.series[t], df)
    assert h.files[0].startswith("s3://sources/prices/date=2017-06-01/") and len(h.files) == 174
    assert list(h.skipped_files().file) == ["s3://sources/prices/_SUCCESS"]


def test_s3_text_prefix_and_file(bucket):
    assert read_text("s3://sources/corpus/") == "First part.\n\nZweiter Teil: äöü.\n"
    assert read_text("s3://sources/corpus/b.txt") == "Zweiter Teil: äöü.\n"


def test_s3_errors_name_the_uri_and_the_fix(bucket, monkeypatch):
    with pytest.raises(DataError, match="s3://nobucket/x: the bucket nobucket does not exist"):
        _load("s3://nobucket/x")
    with pytest.raises(DataError, match="s3://sources/nothing/: no such file or folder"):
        _load("s3://sources/nothing/")
    with pytest.raises(DataError, match="no readable txt files"):
        read_text("s3://sources/prices/")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with pytest.raises(UserError, match=f"cannot reach the S3 endpoint {closed}"):
        _load("s3://sources/prices/", endpoint_url=closed)


def test_check_reads_s3_data_and_fails_cleanly(bucket, moto_s3):
    env = {**os.environ, **moto_s3[1]}
    cmd = [sys.executable, "-m", "jobs.cli", "check"]
    ok = subprocess.run(cmd + ["jobs/configs/forecast-train.yaml", "data.path=s3://sources/prices/",
                               "data.window=20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "174 file(s), 740 rows: 740 kept" in ok.stdout and "5 series kept" in ok.stdout, ok.stdout
    assert "not read _SUCCESS: marker" in ok.stdout
    text = subprocess.run(cmd + ["jobs/configs/text-train.yaml", "data.path=s3://sources/corpus/",
                                 "data.val_frac=0.5", "train.batch_size=2", "data.seq_len=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "s3://sources/corpus/" in text.stdout + text.stderr and "Traceback" not in text.stderr
    bad = subprocess.run(cmd + ["jobs/configs/forecast-train.yaml", "data.path=s3://nobucket/histories/"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bucket nobucket does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr and moto_s3[1]["AWS_SECRET_ACCESS_KEY"] not in bad.stderr + bad.stdout


def test_refused_credentials_exit_2_naming_the_uri_not_the_secret(tmp_path):
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys
    are refused, as S3 refuses them."""
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
        secret = "wrong-secret-never-printed"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIANOTAKEY", "AWS_SECRET_ACCESS_KEY": secret,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
        env.pop("AWS_SESSION_TOKEN", None)
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "check", "jobs/configs/forecast-train.yaml",
                            "data.path=s3://prices/daily/"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 2, r.stderr
    assert "s3://prices/daily/: access denied" in r.stderr and "AWS_PROFILE" in r.stderr
    assert secret not in r.stdout + r.stderr and "Traceback" not in r.stderr
