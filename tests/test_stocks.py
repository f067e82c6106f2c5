import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import FIXTURES, shared

from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import DataError
from rnnlib.stocks import load_histories, normalise_columns, ticker_from_filename


def accounted(h):
    return h.rows_in == h.rows_kept + h.rows_rejected


def reasons(h, ticker=None):
    r = h.rejects if ticker is None else h.rejects[h.rejects.ticker == ticker]
    return " | ".join(r.reason)


def test_bad_fixture_files_each_give_reasons():
    h = load_histories(FIXTURES / "stocks_bad", min_rows=20)
    assert accounted(h)
    rej = h.rejects
    by_file = lambda name: rej[rej.file.str.endswith(name)]
    # HTML error page: the two junk lines are dropped, the series survives
    html = by_file("HTML_data.csv")
    assert "HTML" in h.series and len(h.series["HTML"]) == 120
    assert len(html) == 2 and all(html.action == "drop_row")
    # JSON junk in a row with the right field count: non-numeric / bad date
    assert "unparseable date" in " ".join(by_file("JSON_data.csv").reason)
    # mixed problems: each row dropped once with its own reason, order fixed with a note
    mixed = reasons(h, "MIXED")
    for text in ("duplicate date; first at row 20", "non-numeric, missing or infinite close: 'NaN'",
                 "non-positive close: -3.5", "non-positive close: 0", "unparseable date '2020-13-45'",
                 "high < low", "infinite close: 'inf'", "dates were not in order; sorted"):
        assert text in mixed, text
    assert h.series["MIXED"]["date"].is_monotonic_increasing
    assert len(h.series["MIXED"]) == 120 - 7
    # whole-file problems
    assert "empty file" in " ".join(by_file("EMPTY_data.csv").reason)
    assert "header only" in " ".join(by_file("HEADERONLY_data.csv").reason)
    assert "not UTF-8" in " ".join(by_file("LATIN1_data.csv").reason)
    noclose = " ".join(by_file("NOCLOSE_data.csv").reason)
    assert "missing column(s) close" in noclose and "data.columns" in noclose
    junk = by_file("JUNK_data.csv")
    assert (junk.action == "reject_series").any() and "mostly invalid" in " ".join(junk.reason)
    assert set(h.series) == {"HTML", "JSON", "MIXED"}


def test_row_numbers_point_at_the_file_row():
    h = load_histories(FIXTURES / "stocks_bad" / "MIXED_data.csv", min_rows=20)
    nan_row = h.rejects[h.rejects.reason.str.contains("'NaN'")].row.iloc[0]
    lines = (FIXTURES / "stocks_bad" / "MIXED_data.csv").read_text().splitlines()
    assert "NaN" in lines[int(nan_row)]  # data row r is file line r + 1 (line 0 is the header)


def test_long_table_with_ticker_column_and_other_spellings():
    h = load_histories(FIXTURES / "stocks_long", min_rows=20, needed=("adj_close", "volume"))
    assert set(h.series) == {"AAA", "BBB"}
    assert len(h.series["AAA"]) == 150 and {"adj_close", "volume"} <= set(h.series["AAA"].columns)
    assert "blank ticker" in reasons(h)
    assert accounted(h)


def test_parquet_and_column_map(tmp_path):
    df = pd.read_csv(sample_stocks_dir() / "KO_data.csv").rename(columns={"close": "Last", "date": "Day"})
    df.to_parquet(tmp_path / "KO.parquet")
    unmapped = load_histories(tmp_path, min_rows=10)
    assert not unmapped.series and "missing column(s) close; found Day" in reasons(unmapped)
    assert "{Price: close}" in reasons(unmapped)
    h = load_histories(tmp_path, min_rows=10, columns={"Last": "close"})
    assert len(h.series["KO"]) == len(df)


def test_short_series_rejected_and_missing_folder():
    h = load_histories(sample_stocks_dir() / "APTV_data.csv", min_rows=100)
    assert not h.series and "too short: 44 valid rows" in reasons(h) and accounted(h)
    with pytest.raises(DataError, match="no such file or folder"):
        load_histories("/nonexistent/folder")


def test_bundled_sample_real_flaws():
    h = load_histories(sample_stocks_dir(), min_rows=100, max_jump=1.75)
    assert accounted(h) and h.rows_in == 31519
    assert "close outside [low, high]: 17.87" in reasons(h, "LNT")
    assert "high < low (23.595 < 23.85)" in reasons(h, "AOS")
    ebay = h.rejects[h.rejects.ticker == "EBAY"]
    assert list(ebay.action) == ["drop_rows"] and "x0.43" in ebay.reason.iloc[0]
    assert h.series["EBAY"]["date"].iloc[0] == pd.Timestamp("2015-07-20")
    assert "APTV" not in h.series and len(h.series) == 25


def test_every_messy_file_loads_or_is_rejected_with_a_reason():
    messy = shared("stocks/messy")
    h = load_histories(messy, min_rows=100)
    assert accounted(h)
    files = {str(f) for f in messy.rglob("*.csv")}
    assert set(h.files) == files
    loaded = set(h.series)
    for f in files:
        t = ticker_from_filename(Path(f))
        mentioned = h.rejects.file.eq(f).any()
        assert t in loaded or mentioned, f
    # the mislabelled copy (labelled AAPL, holds Noble Energy prices) is merged into AAPL: its rows
    # clash on dates with the real AAPL file, which sorts first and is kept; each clash is named
    copy = h.rejects[h.rejects.file.str.contains("initial_commit") & (h.rejects.action == "drop_row")]
    assert len(copy) >= 1250 and copy.reason.str.startswith("duplicate date with another close").all()
    assert "of " + str(messy / "AAPL_data.csv") in copy.reason.iloc[0]
    # a colon in the file name is a fine ticker
    assert "NYSE:NBL" in loaded


def test_full_sp500_set_accounting():
    h = load_histories(shared("stocks/sp500_5yr"), min_rows=200)
    assert h.rows_in == 619040 and accounted(h)
    assert set(h.rejected_series().ticker) == {"APTV", "BHF", "BHGE", "DWDP"}


def test_unsorted_copy_is_sorted_not_dropped(tmp_path):
    src = sample_stocks_dir() / "KO_data.csv"
    df = pd.read_csv(src)
    df.iloc[::-1].to_csv(tmp_path / "KO_data.csv", index=False)
    h = load_histories(tmp_path, min_rows=10)
    assert len(h.series["KO"]) == len(df) and "sorted" in reasons(h)


def test_column_spellings():
    m = normalise_columns(["Date", "Adj Close", "Close", "Symbol", "Volume", "junk"])
    assert m == {"Date": "date", "Adj Close": "adj_close", "Close": "close", "Symbol": "ticker", "Volume": "volume"}
    assert ticker_from_filename(Path("NYSE:NBL_data.csv")) == "NYSE:NBL"


def test_copied_folder_with_colon_name(tmp_path):
    shutil.copy(sample_stocks_dir() / "KO_data.csv", tmp_path / "NYSE:KO_data.csv")
    h = load_histories(tmp_path, min_rows=10)
    # the Name column inside the file wins over the file name
    assert list(h.series) == ["KO"]


def test_a_close_only_feed_is_told_which_input_needs_high_and_low(tmp_path):
    from rnnlib.features import source_columns

    (tmp_path / "KO.csv").write_text("date,close\n2020-01-02,10\n2020-01-03,10.5\n")
    h = load_histories(tmp_path, needed=source_columns(("close", "range", "volatility")), min_rows=1)
    why = reasons(h)
    assert not h.series and "missing column(s) high, low; found date, close" in why
    assert "the input(s) range of data.features" in why and "data.features=[close, volatility]" in why
    assert load_histories(tmp_path, needed=source_columns(("close", "volatility")), min_rows=1).series
