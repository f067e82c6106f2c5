"""Bad input (issue 14, the history items): nothing lost in silence, one bad file never stops the
others, no traceback. Each test first builds the bad input: a small file written here from a real
history, and the real messy files (../shared/data/stocks/messy) where they apply."""

import gzip
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, shared

from rnnlib.config import ForecastDataConfig
from rnnlib.datasets import sample_stocks_dir
from rnnlib.stocks import load_histories, rejected_line
from rnnlib.tasks import load_stock_data

KO = sample_stocks_dir() / "KO_data.csv"  # 1,259 clean days (2013-02-08 .. 2018-02-07), nothing rejected


def data_lines(raw: bytes) -> int:
    """Lines after the header, counted as ``wc -l`` does (plus an unfinished last line; a lone
    ``\\r`` ends a line too, as it does for pyarrow)."""
    if not raw:
        return 0
    return max(len(re.findall(rb"\r\n|\r|\n", raw)) + (raw[-1:] not in (b"\n", b"\r")) - 1, 0)


def reasons(h) -> str:
    return " | ".join(h.rejects.reason)


def by_file(h, name: str) -> pd.DataFrame:
    return h.rejects[h.rejects.file.str.endswith(name)]


def ko() -> pd.DataFrame:
    return pd.read_csv(KO)


@pytest.fixture(scope="module")
def iso():
    return load_histories(KO).series["KO"]


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# 1. One unbalanced quote swallowed the rest of the file into one field (1,259 lines -> 101 rows).

def test_an_unbalanced_quote_costs_its_own_line_only(tmp_path):
    lines = KO.read_text().splitlines()
    lines[101] = lines[101].replace(",KO", ',"KO')  # a quote opens in the Name field and never closes
    lines[200] = '"' + lines[200]                     # and one before a date
    f = _write(tmp_path / "KO_data.csv", "\n".join(lines) + "\n")
    h = load_histories(tmp_path, min_rows=100)
    assert h.rows_in == data_lines(f.read_bytes()) == 1259
    assert h.rows_rejected == 2 and len(h.series["KO"]) == 1257
    row = dict(zip(h.rejects.row, h.rejects.reason))
    assert row[101] == "not a ticker: '\"KO'" and row[200] == f"unparseable date '\"{lines[200][1:11]}'"


def test_an_unbalanced_quote_in_real_files_large_and_small(tmp_path):
    messy = shared("stocks/messy")
    lines = (messy / "NYSE:NBL_data.csv").read_text().splitlines()
    lines[101] = '"' + lines[101]
    small = _write(tmp_path / "small" / "NYSE:NBL_data.csv", "\n".join(lines) + "\n")
    h = load_histories(small.parent, max_jump=100)  # (NBL's unadjusted split is not the point here)
    assert h.rows_in == 1258 == h.rows_kept + 1 and list(h.rejects.row) == [101]
    assert "unparseable date" in reasons(h)
    # a long table over one 1 MiB parse block: pyarrow lost sync and the whole file went, counted as 0 rows
    files = sorted(sample_stocks_dir().glob("*.csv"))
    body = [line for f in files for line in f.read_text().splitlines()[1:]]
    body[20000] = '"' + body[20000]
    big = _write(tmp_path / "big" / "prices.csv", "date,open,high,low,close,volume,Name\n" + "\n".join(body) + "\n")
    assert big.stat().st_size > 1 << 20
    h = load_histories(big.parent)
    assert h.rows_in == len(body) == data_lines(big.read_bytes())
    assert len(h.series) == 26 and by_file(h, "prices.csv").row.tolist().count(20001) == 1


def test_blank_lines_and_crlf_are_lines_too(tmp_path):
    text = KO.read_text().replace("\n", "\r\n", 40).replace("\n2014-01-02", "\n\n  \n2014-01-02")
    f = _write(tmp_path / "KO_data.csv", text + "\n")
    h = load_histories(tmp_path)
    assert h.rows_in == data_lines(f.read_bytes()) == 1259 + 3
    assert len(h.series["KO"]) == 1259 and sorted(h.rejects.reason) == ["blank line (no values)"] * 3


# 2. Day-first dates were read month-first without a word.

def test_day_first_dates_are_decided_per_file(tmp_path, iso):
    day = pd.to_datetime(ko().date)
    dmy = ko().assign(date=day.dt.strftime("%d/%m/%Y"))
    mdy = ko().assign(date=day.dt.strftime("%m/%d/%Y"))
    for name, frame in (("dmy", dmy), ("mdy", mdy)):
        frame.to_csv(_write(tmp_path / name / "KO_data.csv", ""), index=False)
        h = load_histories(tmp_path / name)
        assert h.rows_rejected == 0, (name, reasons(h))
        pd.testing.assert_frame_equal(h.series["KO"], iso)
    # nothing settles the order (every day is 12 or less): the file is rejected, pointing at data.date_format
    early = day.dt.day <= 12
    dmy[early].to_csv(_write(tmp_path / "early" / "KO_data.csv", ""), index=False)
    h = load_histories(tmp_path / "early")
    assert not h.series and h.rows_rejected == early.sum() == h.rows_in
    assert "can be day-first or month-first" in reasons(h) and "data.date_format" in reasons(h)
    h = load_histories(tmp_path / "early", date_format="%d/%m/%Y")
    assert list(h.series["KO"].date) == list(iso.date[early.to_numpy()])
    _, data = load_stock_data(ForecastDataConfig(path=str(tmp_path / "early"), date_format="%d/%m/%Y",
                                                 window=20, horizon=5))
    assert len(data.train) > 0
    # both orders in one file: rejected, not guessed row by row
    pd.concat([dmy[:300], mdy[300:]]).to_csv(_write(tmp_path / "mixed" / "KO_data.csv", ""), index=False)
    h = load_histories(tmp_path / "mixed")
    assert not h.series and "mix day-first" in reasons(h) and h.rows_in == h.rows_rejected == 1259


# 3. Timestamps with UTC offsets: mixed offsets aborted the folder; others kept a time of day.

def test_timestamps_with_offsets_are_the_calendar_date_written(tmp_path, iso):
    day = pd.to_datetime(ko().date)
    close = day.dt.tz_localize("America/New_York") + pd.Timedelta(hours=16)  # -05:00 winter, -04:00 summer
    ko().assign(date=close.map(lambda t: t.isoformat()), Name="NY").to_csv(tmp_path / "NY_data.csv", index=False)
    ko().assign(date=close.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                Name="UTC").to_csv(tmp_path / "UTC_data.csv", index=False)
    tokyo = day.dt.tz_localize("Asia/Tokyo")  # midnight in Tokyo is the day before in UTC
    pq.write_table(pa.table({"date": pa.array(tokyo), "close": ko().close, "ticker": ["TOKYO"] * len(day)}),
                   tmp_path / "tokyo.parquet")
    h = load_histories(tmp_path)
    assert h.rows_rejected == 0, reasons(h)
    for t in ("NY", "UTC", "TOKYO"):
        assert h.series[t].date.dt.tz is None
        assert list(h.series[t].date) == list(iso.date), t
    # the dates compare with the config's cutoffs (they used to be aware, or keep a time of day)
    _, data = load_stock_data(ForecastDataConfig(path=str(tmp_path), val_start="2016-06-01",
                                                 test_start="2017-01-03", window=20, horizon=5))
    assert len(data.train) and len(data.val) and len(data.test)



def test_score_run_ids_change_only_when_a_read_option_is_set():
    import hashlib
    import json

    from jobs.score import load_score_config, run_id
    from rnnlib.config import to_dict

    config, listing = str(ROOT / "jobs" / "configs" / "forecast-score.yaml"), [("a.csv", 1, 2.0)]
    cfg = load_score_config(config, [])
    before = {k: v for k, v in to_dict(cfg).items() if k in ("mode", "as_of", "backtest_days", "step", "columns")}
    key = json.dumps({"model": "sha", "input": listing, **before}, sort_keys=True, default=str)
    assert run_id(cfg, "sha", listing) == hashlib.sha256(key.encode()).hexdigest()[:16]  # a rerun is still a no-op
    assert run_id(load_score_config(config, ["date_format=%d/%m/%Y"]), "sha", listing) != run_id(cfg, "sha", listing)


def test_training_run_names_change_only_when_a_read_option_is_set():
    import hashlib
    import json

    from jobs.train import identity, run_name
    from rnnlib.config import load_job, to_dict

    config = str(ROOT / "jobs" / "configs" / "forecast-train.yaml")
    cfg, data = load_job(config, []), {"sha256": "a" * 64}
    before = to_dict(cfg)  # the config as it was before the options existed
    before["data"] = {k: v for k, v in before["data"].items() if k not in ("delimiter", "date_format", "end")}
    digest = hashlib.sha256(json.dumps(identity(before, data), sort_keys=True).encode()).hexdigest()[:10]
    assert run_name(cfg, data) == f"forecast-lstm-{digest}"  # so a run resumes when the key is new to it
    assert run_name(load_job(config, ["data.delimiter=;"]), data) != run_name(cfg, data)
    assert run_name(load_job(config, ["data.end=2017-12-29"]), data) != run_name(cfg, data)

# 4. One bad file aborted the whole load (or score run) with a traceback.

def bad_folder(root):
    """A good file next to one of each kind of file that used to raise or vanish."""
    ko().to_csv(root / "KO_data.csv", index=False)
    day = pd.to_datetime(ko().date).dt.tz_localize("America/New_York") + pd.Timedelta(hours=16)
    ko().assign(date=day.map(lambda t: t.isoformat()), Name="TZ").to_csv(root / "TZ_data.csv", index=False)
    lines = KO.read_text().replace(",KO", ",LONG").splitlines()
    lines[50] += "," + "x" * (200 << 10)                       # a line over 128 KiB
    _write(root / "LONG_data.csv", "\n".join(lines) + "\n")
    _write(root / "WIDE_data.csv", "date," + "c" * (200 << 10) + "\n2020-01-01,1\n")  # a header over 128 KiB
    files = [f for f in sorted(sample_stocks_dir().glob("*.csv")) if f.name != "KO_data.csv"]
    body = [line for f in files for line in f.read_text().splitlines()[1:]]
    body[20000] = '"' + body[20000]                           # an unbalanced quote in a large file
    _write(root / "QUOTED_data.csv", "date,open,high,low,close,volume,Name\n" + "\n".join(body) + "\n")
    (root / "LATIN1_data.csv").write_bytes("date,close,Name\n2020-01-01,1,Soci\xe9t\xe9\n".encode("latin-1"))
    (root / "GZ_data.csv").write_bytes(gzip.compress(KO.read_bytes()))
    (root / "BROKEN.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 8)
    pq.write_table(pa.table({"date": ["2020-01-01"] * 10, "close": [1.0] * 10}), root / "CUT.parquet")
    (root / "CUT.parquet").write_bytes((root / "CUT.parquet").read_bytes()[:-30])
    return root


def test_one_bad_file_never_stops_the_others(tmp_path):
    h = load_histories(bad_folder(tmp_path), min_rows=100)
    assert h.rows_in == h.rows_kept + h.rows_rejected
    # (a Parquet file cut short has no footer, so no row count: it adds none)
    assert h.rows_in == sum(data_lines(f.read_bytes()) for f in tmp_path.glob("*.csv"))
    assert {"KO", "TZ", "LONG"} <= set(h.series) and len(h.series["LONG"]) == 1258
    assert "longer than the 128 KiB limit" in reasons(h)
    quoted = by_file(h, "QUOTED_data.csv")
    assert quoted[quoted.row == 20001].reason.str.startswith("unparseable date '\"").sum() == 1
    assert quoted.rows.sum() < 1000 and len(set(h.series) - {"KO", "TZ", "LONG"}) >= 20
    for name, why in [("WIDE_data.csv", "bytes long: not a CSV header"), ("LATIN1_data.csv", "not UTF-8"),
                      ("GZ_data.csv", "gzip-compressed data: name it .csv.gz"),
                      ("BROKEN.parquet", "not a readable Parquet file"), ("CUT.parquet", "Parquet")]:
        rej = by_file(h, name)
        assert (rej.action == "reject_series").any() and why in " ".join(rej.reason), (name, rej.reason.tolist())
    gz = by_file(h, "GZ_data.csv")  # a file rejected whole still counts its lines (as wc -l does)
    assert gz.rows.sum() == data_lines((tmp_path / "GZ_data.csv").read_bytes())


def test_a_failure_in_one_file_or_series_is_its_reject(tmp_path, monkeypatch):
    import rnnlib.stocks as stocks

    ko().to_csv(tmp_path / "KO_data.csv", index=False)
    ko().assign(Name="PEP").to_csv(tmp_path / "PEP_data.csv", index=False)
    ko().assign(Name="XOM").to_csv(tmp_path / "XOM_data.csv", index=False)
    typed, clean = stocks._typed, stocks._clean_series

    def typed_fails(text, mapping, uri, *a, **k):
        if "PEP" in uri:
            raise RuntimeError("boom in " + "x" * 500)
        return typed(text, mapping, uri, *a, **k)

    def clean_fails(files, ticker, *a):
        if ticker == "XOM":
            raise ZeroDivisionError("bust")
        return clean(files, ticker, *a)

    monkeypatch.setattr(stocks, "_typed", typed_fails)
    monkeypatch.setattr(stocks, "_clean_series", clean_fails)
    h = load_histories(tmp_path)
    assert list(h.series) == ["KO"] and h.rows_in == 3 * 1259 == h.rows_kept + h.rows_rejected
    assert "failed to read (RuntimeError: boom in xxx" in reasons(h) and len(reasons(h)) < 400
    assert "failed to validate (ZeroDivisionError: bust)" in reasons(h)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from rnnlib.bundle import load_bundle
    from rnnlib.config import job_from_dict
    from rnnlib.fit import fit

    out = tmp_path_factory.mktemp("fc") / "model"
    cfg = job_from_dict({"model": {"hidden": 4, "layers": 1}, "train": {"epochs": 1, "max_batches": 2},
                         "data": {"path": str(KO), "window": 10, "horizon": 2, "quantiles": []}})
    fit(cfg, out=out, log=lambda s: None)
    return load_bundle(out, task="forecast")


def test_scoring_goes_on_past_bad_files(bundle, tmp_path):
    from rnnlib.scoring import score_files

    res = score_files(bundle, [bad_folder(tmp_path)], as_of="2017-12-29")
    assert {"KO", "TZ", "LONG"} <= set(res.forecasts.ticker)
    assert (res.forecasts.as_of == pd.Timestamp("2017-12-29")).all()
    assert res.hist.rows_in == res.hist.rows_kept + res.hist.rows_rejected
    rejected = {f.rsplit("/", 1)[-1] for f in res.rejects[res.rejects.action == "reject_series"].file.dropna()}
    assert {"WIDE_data.csv", "LATIN1_data.csv", "GZ_data.csv", "BROKEN.parquet", "CUT.parquet"} <= rejected


def test_check_reports_bad_files_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "check", "jobs/configs/forecast-train.yaml",
                        f"data.path={bad_folder(tmp_path)}", "data.window=20"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "rejected file WIDE_data.csv: the first line is" in r.stdout
    assert "rejected file GZ_data.csv: not CSV text but gzip-compressed data" in r.stdout
    assert not re.search(r"\bnan\b", r.stdout) and "rejected ?" not in r.stdout


# 5. A reject reason quotes a file's content only as a short, printable excerpt.

def test_reasons_quote_content_only_as_short_printable_excerpts(tmp_path):
    junk = "x" * 100 + "\x1b[31m" + "\u0007<\x7f>" * 3000  # terminal escapes, bells, 12 K characters
    _write(tmp_path / "HEAD_data.csv", f"date,{junk}\n2020-01-01,1\n")
    _write(tmp_path / "ROWS_data.csv", "date,close,Name\n"
           f"2020-01-01,1,{junk}\n2020-01-02,{junk},A\n{junk},1,A\n2020-01-04,1,A,{junk}\n2020-01-05,1,A\n")
    _write(tmp_path / "HTML_data.csv", "<!DOCTYPE html><html><body>" + "503 " * 5000 + "</body></html>\n")
    _write(tmp_path / "JSON_data.csv", '{"error": "' + "no such key " * 5000 + '"}\n')
    h = load_histories(tmp_path)
    assert h.rows_in == h.rows_kept + h.rows_rejected
    for text in [*h.rejects.reason, *h.summary().splitlines()]:
        assert text.isprintable() and len(text) < 400, text[:500]
    assert all(not isinstance(t, str) or (t.isprintable() and len(t) <= 40) for t in h.rejects.ticker)
    assert "not a ticker: 'xxx" in reasons(h) and "missing column(s) close; found date, xxx" in reasons(h)


# 6. A one-day spike near the end was taken for a split: the history before it went.

def test_a_one_day_spike_is_one_bad_row_a_split_persists(tmp_path):
    df = ko()
    k = len(df) - 8
    df.loc[k, ["open", "high", "low", "close"]] *= 3      # x3, back the next day
    df.loc[k - 400, ["open", "high", "low", "close"]] /= 3  # and a drop that comes back
    df.to_csv(_write(tmp_path / "KO_data.csv", ""), index=False)
    h = load_histories(tmp_path, min_rows=100)
    assert len(h.series["KO"]) == 1257 and "drop_rows" not in set(h.rejects.action)
    assert sorted(h.rejects.row) == [k - 400 + 1, k + 1]  # data lines (the header is line 0)
    assert all("one-day spike" in r for r in h.rejects.reason)
    # the real unadjusted split in the messy DVA file (2:1, 2013-09-23) still cuts the history
    h = load_histories(shared("stocks/messy") / "DVA_data.csv", min_rows=100)
    assert list(h.rejects.action) == ["drop_rows"] and h.rejects.date.iloc[0] == "2013-09-23"


# 7. Reasons that misdescribe the file or suggest a fix that does not work.

def test_reasons_say_what_the_file_is_and_the_fix_that_works(tmp_path, iso):
    ko().to_csv(tmp_path / "KO_data.csv", index=False)
    rng = np.random.default_rng(0)
    (tmp_path / "BIN_data.csv").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "ZERO_data.csv").write_bytes(bytes(4096))
    _write(tmp_path / "HTML_data.csv", "<html><body><h1>503 Service Unavailable</h1></body></html>")
    _write(tmp_path / "JSON_data.csv", '{"message": "Not Found"}\n')
    h = load_histories(tmp_path)
    summary = h.summary()
    assert not re.search(r"\bnan\b", summary) and "rejected ?" not in summary
    # the score job prints its rejects after a round trip through JSON and pandas: None is NaN there
    assert rejected_line(np.nan, "s3://b/X.csv", "empty file") == "rejected file X.csv: empty file"
    for name, why in [("BIN", "binary data"), ("ZERO", "binary data"), ("HTML", "an HTML or XML document"),
                      ("JSON", "JSON, not CSV")]:
        assert f"rejected file {name}_data.csv: not CSV text but {why}" in summary or \
            f"rejected file {name}_data.csv: {why}" in summary, (name, summary)


def test_semicolons_with_decimal_commas_and_adj_close_only_name_the_fix(tmp_path, iso):
    euro = ko().assign(volume=ko().volume.map(lambda v: f"{v:,}".replace(",", ".")))
    euro.to_csv(_write(tmp_path / "semi" / "KO_data.csv", ""), sep=";", decimal=",", index=False)
    h = load_histories(tmp_path / "semi", needed=("close", "volume"))
    assert not h.series and h.rows_in == 1259
    assert "holds no ',' but ';': set data.delimiter=';'" in reasons(h) and "data.columns" not in reasons(h)
    h = load_histories(tmp_path / "semi", needed=("close", "volume"), delimiter=";")
    pd.testing.assert_frame_equal(h.series["KO"], load_histories(KO, needed=("close", "volume")).series["KO"])
    adj = ko()[["date", "close"]].rename(columns={"close": "Adj Close"})
    adj.to_csv(_write(tmp_path / "adj" / "KO_data.csv", ""), index=False)
    h = load_histories(tmp_path / "adj")
    assert "data.target=adj_close data.features=[]" in reasons(h)
    assert len(load_histories(tmp_path / "adj", needed=("adj_close",)).series["KO"]) == 1259
    assert len(load_histories(tmp_path / "adj", columns={"Adj Close": "close"}).series["KO"]) == 1259



def test_a_series_holds_the_columns_asked_for_and_high_low_still_check_the_close(tmp_path):
    """Only the columns a job uses are read into its series (a 200 MB table of five value columns
    need not be held for one); high and low are still read to check the close against."""
    df = ko().astype({"open": object})
    df.loc[9, "close"] = df.loc[9, "high"] * 1.2
    df.loc[20, "open"] = "n/a"  # never read unless asked for
    df.to_csv(_write(tmp_path / "KO_data.csv", ""), index=False)
    h = load_histories(tmp_path, needed=("close",))
    assert list(h.series["KO"].columns) == ["date", "close"] and len(h.series["KO"]) == 1258
    assert by_file(h, "KO_data.csv")[["row", "reason"]].values.tolist() == [
        [10, f"close outside [low, high]: {df.close[9]:g} not in [{df.low[9]:g}, {df.high[9]:g}]"]]
    h = load_histories(tmp_path, needed=("volume", "open", "close"))
    assert list(h.series["KO"].columns) == ["date", "open", "close", "volume"] and len(h.series["KO"]) == 1257
    assert "non-numeric, missing or infinite open: 'n/a'" in reasons(h)


def test_rows_the_csv_module_recovers_keep_their_place_in_the_series(tmp_path):
    """A line whose quotes hold the delimiter is recovered after its batch is parsed, so it reaches
    the table out of line order: the series is still ordered by line (dates in order, no note)."""
    df = ko()
    lines = df.to_csv(index=False).splitlines()
    k = 700  # data line k: quote its volume and write it with a thousands separator
    fields = lines[k].split(",")
    fields[5] = f'"{int(fields[5]):,}"'
    lines[k] = ",".join(fields)
    (tmp_path / "KO_data.csv").write_text("\n".join(lines) + "\n")
    h = load_histories(tmp_path, needed=("close",))
    assert len(h.series["KO"]) == 1259 and h.rows_rejected == 0
    assert h.series["KO"]["date"].is_monotonic_increasing and not len(h.rejects)

# Property: whatever happens to a real history, the loader never raises and counts every line.

MUTATIONS = ("flip", "truncate", "quote", "delimiter", "encoding", "duplicate", "blank", "shuffle", "crlf",
             "long_line", "nul")


def mutate(draw, raw: bytes, st) -> bytes:
    """``raw`` with one to three of ``MUTATIONS``, positions and bytes drawn by hypothesis."""
    for op in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and raw:
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(raw) - 1))
                raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
        elif op == "truncate":
            raw = raw[:at]
        elif op in ("quote", "delimiter", "nul"):
            pick = {"quote": ['"', "'", '""'], "delimiter": [",", ";", "\t", "|", ",,"], "nul": ["\0"]}[op]
            raw = raw[:at] + draw(st.sampled_from(pick)).encode() + raw[at:]
        elif op == "encoding":
            text = raw.decode("utf-8", "replace").replace("KO,", "Société,", 3)
            raw = text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "latin-1", "cp1252", "utf-8-sig"])),
                              "replace")
        elif op == "crlf":
            raw = raw.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r"])))
        elif op == "long_line":
            raw = raw[:at] + b"9" * (130 << 10) + raw[at:]
        else:  # line edits
            lines = raw.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "duplicate":
                lines[i:i] = [lines[i]] * draw(st.integers(1, 3))
            elif op == "blank":
                lines[i:i] = [draw(st.sampled_from([b"", b"  ", b"\r", b",,,,,,"]))]
            else:  # shuffle the data lines
                head, body = lines[:1], lines[1:]
                order = draw(st.permutations(range(len(body))))
                lines = head + [body[j] for j in order]
            raw = b"\n".join(lines)
    return raw


def test_mutated_histories_never_raise_and_every_line_is_counted(tmp_path):
    from conftest import optional

    optional("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    messy = shared("stocks/messy")
    # real histories (raw and clean, one short), cut to 150 days so that each example is fast
    files = (KO, messy / "DVA_data.csv", messy / "NYSE:NBL_data.csv", sample_stocks_dir() / "APTV_data.csv")
    sources = [b"\n".join(f.read_bytes().split(b"\n")[:151]) + b"\n" for f in files]
    target = tmp_path / "X_data.csv"

    @settings(max_examples=120, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data):
        raw = mutate(data.draw, data.draw(st.sampled_from(sources)), st)
        target.write_bytes(raw)
        h = load_histories(target, min_rows=10)  # no exception escapes
        assert h.rows_in == data_lines(raw) == h.rows_kept + h.rows_rejected
        assert (h.rejects.rows >= 0).all() and not h.rejects.reason.str.contains("returned no row").any()
        for text in [*h.rejects.reason, *h.summary().splitlines()]:
            assert text.isprintable() and len(text) < 400, text[:500]

    check()
