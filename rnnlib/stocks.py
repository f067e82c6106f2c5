"""Stock histories: load per-ticker files or long tables, validate with reasons.

Files come from ``rnnlib.sources`` (a local path, ``file://`` or ``s3://`` URI; per-ticker files,
one long table with a ticker column, or a long table split over many files). The rows of a ticker
from every file are merged (in listing order) into one series, then validated.

Every input row is accounted for: ``rows_in == rows_kept + rejects.rows.sum()``, where the rows
of a CSV file are its data lines (every line after the header; ``rnnlib.sources`` never lets one
line swallow another) and those of a Parquet file its rows. One bad file or series never stops
the others: whatever is wrong with it becomes its reject line.
What happens to a bad row, by reason (first matching reason wins):

====================================  =====================================================
reason                                action
====================================  =====================================================
wrong number of fields, a stray       the row (line) is dropped; a line whose quoted fields
  (unbalanced) quote, a blank line,   hold the delimiter is read as CSV quoting says
  a line over 128 KiB
blank ticker, or text that is not a   the row is dropped (the text quoted only as a short,
  ticker (over 40 characters,         printable excerpt, as everywhere in reasons)
  unprintable, a quote in it)
unparseable date                      the row is dropped. Dates are calendar days: ISO 8601
                                      (``2013-02-08``), ``2013/02/08``, ``20130208``, D/M/Y
                                      or M/D/Y, ``8 Feb 2013`` ...; a time of day and a UTC
                                      offset are dropped, the date is the one written
                                      (``2013-02-08T16:00:00-05:00`` is 2013-02-08, so mixed
                                      offsets, e.g. daylight saving, are fine; a Parquet
                                      timestamp with a time zone gives its local date)
D/M/Y or M/D/Y (``02/08/2013``)       the order is decided per file: a first number above
                                      12 (``13/02/2013``) makes the file day-first, a second
                                      one month-first; when nothing decides (or both occur),
                                      the file is rejected, pointing at ``data.date_format``
                                      (a strftime spelling, e.g. ``%d/%m/%Y``)
non-numeric / NaN / inf value         the row is dropped (only columns the job uses count:
                                      NaN in ``open`` does not matter when only ``close``
                                      is a feature); with a delimiter other than ``,``
                                      (``data.delimiter``), decimal commas (``1.234,56``) are
                                      numbers
non-positive price, negative volume   the row is dropped
high < low, close outside [low, high] the row is dropped (a one-day glitch, e.g. LNT's
                                      halved close on 2016-05-19)
duplicated date                       later copies are dropped, the first (in listing order:
                                      the file sorting first, then its first line) is kept
dates out of order                    the series is sorted; a note is recorded, no row lost
close moves by more than ``max_jump``  the row is dropped: a one-day spike, not a split
  in one day and back the next day
close moves by more than ``max_jump``  rows before the jump are dropped: an unadjusted split
  in one day (and stays)              or spin-off (EBAY, NI) makes the older prices
                                      incomparable, and the recent part is what forecasts use
more than half the rows invalid       the whole series is rejected (a mislabelled or
                                      corrupted file)
fewer rows than ``min_rows``          the whole series is rejected (too short to window)
unreadable file, not UTF-8, empty,    the whole file is rejected, all its lines counted; the
  binary, HTML or JSON, missing a     reason names the fix that works (``data.delimiter``
  required column                     for a ';'-separated file, ``data.target=adj_close``
                                      for a file with only ``Adj Close``, ``data.columns``)
an entry that is not a history file   listed as not read (see ``rnnlib.sources``)
====================================  =====================================================
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .features import DERIVED
from .sources import ROW, Listing, _excerpt, delimiter_of, list_source, printable, read_entries

PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")

# Normalised spelling (lower case, spaces and dashes as underscores) -> canonical column.
ALIASES = {
    "date": "date", "timestamp": "date", "datetime": "date", "time": "date", "day": "date",
    "open": "open", "high": "high", "low": "low", "close": "close",
    "adj_close": "adj_close", "adjclose": "adj_close", "adjusted_close": "adj_close",
    "volume": "volume", "vol": "volume",
    "name": "ticker", "ticker": "ticker", "symbol": "ticker",
}
REJECT_COLUMNS = ["file", "ticker", "row", "date", "rows", "action", "reason"]

# Reject actions: what happened to the rows a reject line counts.
DROP_ROW = "drop_row"            # one row dropped
DROP_ROWS = "drop_rows"          # a block of rows dropped (before a split)
REJECT_SERIES = "reject_series"  # a whole series or file rejected
SKIP_FILE = "skip_file"          # an entry of the source not read (rows 0: nothing was in it for us)
NOTE = "note"                    # nothing lost; something worth knowing


@dataclass
class Histories:
    """Clean series by ticker plus every rejected row or series with its reason.

    Each series is a DataFrame with a ``date`` column (datetime64, strictly increasing) and
    the canonical price/volume columns the job asked for, as float64.
    ``rejects`` has one line per dropped row (``rows == 1``), per dropped block or rejected
    series (``rows`` = rows lost) and per note or skipped entry (``rows == 0``). ``row`` is the
    1-based data line within ``file`` (the header is line 0).
    """

    series: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    rows_in: int
    files: list[str] = field(default_factory=list)
    end: str | None = None  # rows dated after it were left out before validation (not in rows_in)
    rows_after_end: int = 0
    files_of: dict[str, np.ndarray] = field(default_factory=dict)  # ticker -> indices in files of its rows
    rows_elsewhere: int = 0  # rows of tickers not asked for (load_histories' tickers), not in the counts
    listing: Listing | None = None  # what was read (load_histories), with each file's size and time

    @property
    def rows_kept(self) -> int:
        return int(sum(len(s) for s in self.series.values()))

    @property
    def rows_rejected(self) -> int:
        return int(self.rejects["rows"].sum())

    def rejected_series(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == REJECT_SERIES]

    def skipped_files(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == SKIP_FILE]

    def summary(self) -> str:
        """One line of counts, then each rejected series and skipped entry with its reason."""
        skipped = self.skipped_files()
        lines = [f"{len(self.files)} file(s), {self.rows_in} rows: {self.rows_kept} kept, "
                 f"{self.rows_rejected} rejected; {len(self.series)} series kept, "
                 f"{len(self.rejected_series())} rejected"
                 + (f"; {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} not read" if len(skipped) else "")
                 + (f"; {self.rows_after_end} rows after data.end {self.end} left out" if self.end else "")]
        for r in self.rejected_series().itertuples():
            lines.append("  " + rejected_line(r.ticker, r.file, r.reason))
        for r in skipped.itertuples():
            lines.append(f"  not read {_short(r.file)}: {r.reason}")
        return "\n".join(lines)


def rejected_line(ticker, file, reason) -> str:
    """``rejected TICKER (FILE): REASON``, or ``rejected file FILE: REASON`` for a file rejected
    whole (its ticker unknown: None, or NaN once the rejects went through a DataFrame)."""
    if isinstance(ticker, str) and ticker:
        return f"rejected {ticker} ({_short(file)}): {reason}"
    return f"rejected file {_short(file)}: {reason}"


def _short(file) -> str:
    return posixpath.basename(str(file)) if file and "/" in str(file) and " " not in str(file) else str(file)


def normalise_columns(names: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Map the file's column names to canonical ones; names we do not know are left out."""
    extra = {_norm(k): v for k, v in (extra or {}).items()}
    out = {}
    for name in names:
        key = _norm(name)
        canonical = extra.get(key) or ALIASES.get(key)
        if canonical and canonical not in out.values():
            out[name] = canonical
    return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def ticker_from_filename(path: str | Path) -> str:
    """``AAPL_data.csv`` -> ``AAPL``; ``NYSE:NBL_data.csv`` -> ``NYSE:NBL``; ``KO.csv.gz`` -> ``KO``."""
    name = posixpath.basename(str(path))
    stem = name.split(".")[0] if "." in name else name
    return re.sub(r"[_\-]data$", "", stem, flags=re.IGNORECASE)


class _Rejects:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, *, file, action: str, reason: str, ticker=None, row=None, date=None, rows: int = 0):
        self.items.append(dict(file=str(file), ticker=ticker, row=row, date=date, rows=int(rows),
                               action=action, reason=reason))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.items, columns=REJECT_COLUMNS)
        return df.astype({"rows": "int64"})


FILE = "__file"  # the column holding each row's index into Histories.files
MAX_TICKER = 40  # characters; longer text in the ticker column is not a ticker


def load_histories(
    source: str | Path | list | Listing,
    *,
    needed: tuple[str, ...] = ("close",),
    columns: dict[str, str] | None = None,
    min_rows: int = 1,
    max_jump: float = 1.75,
    endpoint_url: str | None = None,
    delimiter: str | None = None,
    date_format: str | None = None,
    end: str | None = None,
    tickers: Collection[str] | None = None,
) -> Histories:
    """Load and validate every history under ``source``: a URI (local path, ``file://``,
    ``s3://``) of a file, folder or prefix, a list of them, or a ``sources.Listing``.

    Per-ticker files, one long table with a ticker column, and long tables split over many files
    (Hive partitions, one file per day or month) all work: the rows of a ticker from every file
    are merged into one series before validation, and every rejected row names its file and line.
    ``needed``: the canonical value columns the job uses (features and target); only these must
    be valid on a row. ``min_rows``: shortest usable series after cleaning. ``delimiter`` and
    ``date_format``: as for ``read_rows``. ``end`` (YYYY-MM-DD): rows dated after it are left out
    before validation, as if they had not arrived yet (counted in ``rows_after_end``).
    ``tickers``: keep only these tickers' rows, dropped batch by batch as files are read, so memory
    does not grow with the others (a Ray Train worker's shard; ``rows_elsewhere`` counts the rest).
    """
    listing = source if isinstance(source, Listing) else source_listing(source, endpoint_url)
    with system_memory_pool():
        rows = read_rows(listing, needed=needed, columns=columns, endpoint_url=endpoint_url, delimiter=delimiter,
                         date_format=date_format, tickers=tickers)
        after = 0
        if end is not None:
            rows, after = rows.until(end)
        hist = validate_rows(rows, needed=needed, min_rows=min_rows, max_jump=max_jump)
    hist.end, hist.rows_after_end, hist.listing = end, after, listing
    return hist


@contextmanager
def system_memory_pool():
    """Arrow allocates from the C library's malloc inside the block, not its default pool.

    Loading frees memory as it goes: each batch of text once it is parsed (``read_rows``), each
    batch of parsed rows once ``_by_ticker`` has placed them, and asks the pool to hand freed
    pages back (``release_unused``). The default pool (mimalloc or jemalloc) keeps most of them
    anyway, so the text, the table and the ordered arrays were all held at the peak
    (bench/load_memory.py: 4.4x the CSV's size before, 2.6x now). Each buffer returns to the pool
    it came from, so arrays made inside the block outlive it safely."""
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(before)


@dataclass
class Rows:
    """History rows as read, before validation: what ``read_rows`` hands ``validate_rows``.

    ``table`` has ``ROW_SCHEMA``'s columns: ticker, date, prices and volume parsed, ``ROW``
    (the data line), ``FILE`` (an index into ``files``) and ``RAW``; ``rejects`` holds what reading already refused
    (bad lines, unreadable files, skipped entries); ``rows_in`` counts every data line read.
    A job may read rows in one place and validate them in another (a shuffle by ticker between).
    """

    table: pa.Table | None
    files: list[str]
    rejects: list[dict]
    rows_in: int
    elsewhere: int = 0  # rows read and left out: their ticker was not wanted (read_rows' tickers)

    def until(self, end: str) -> tuple[Rows, int]:
        """These rows without those dated after ``end``, and how many those were. A row whose date
        did not parse stays, to be named as bad by validation."""
        if self.table is None:
            return self, 0
        cutoff = pa.scalar(pd.Timestamp(end).to_pydatetime(), pa.timestamp("ns"))
        kept = self.table.filter(pc.fill_null(pc.less_equal(self.table["date"], cutoff), True))
        after = self.table.num_rows - kept.num_rows
        return Rows(kept, self.files, self.rejects, self.rows_in - after, self.elsewhere), after


VALUE_COLUMNS = PRICE_COLUMNS + ("volume",)
CHECKED = ("high", "low")  # read when present though no job asks for them: a price must lie within them
RAW = "__raw"  # JSON {column: text as read} of the cells that did not parse (for messages); null elsewhere
ROW_SCHEMA = pa.schema([("ticker", pa.string()), ("date", pa.timestamp("ns")),
                        *[(c, pa.float64()) for c in VALUE_COLUMNS],
                        (ROW, pa.int32()), (FILE, pa.int32()), (RAW, pa.string())])


def read_rows(listing: Listing, *, needed: tuple[str, ...] = ("close",), columns: dict[str, str] | None = None,
              endpoint_url: str | None = None, files: list[str] | None = None, uniform: bool = False,
              delimiter: str | None = None, date_format: str | None = None,
              tickers: Collection[str] | None = None) -> Rows:
    """Read every entry of ``listing`` into typed rows (``ROW_SCHEMA``'s columns: dates and
    numbers parsed batch by batch as each file is read, the text of a cell that does not parse
    kept in ``RAW`` for its message). ``files``: the list ``FILE`` indexes (default: the
    listing's own); ``uniform``: every ``ROW_SCHEMA`` column, nulls where no file has one, so
    tables from different reads concatenate. ``delimiter``: of CSV/TSV files (default by suffix);
    ``date_format``: strftime spelling of dates that are not ISO 8601 (default: detected per file);
    ``tickers``: as for ``load_histories``."""
    rejects = _Rejects()
    for uri, why in listing.skipped:
        rejects.add(file=uri, action=SKIP_FILE, reason=why)
    files = files if files is not None else [e.uri for e in listing.entries]
    parse = tuple(c for c in VALUE_COLUMNS if c in needed or c in CHECKED)  # no other column is used
    index = {u: i for i, u in enumerate(files)}
    found: dict[str, dict] = {}  # per file: its column mapping, the required columns it lacks, its dates
    wanted = pa.array(sorted(tickers), pa.string()) if tickers is not None else None
    elsewhere = 0  # rows of tickers not wanted

    def header(info: dict, names: list[str]) -> None:
        info["mapping"] = normalise_columns(names, columns)
        info["names"] = names
        info["missing"] = [c for c in ("date",) + tuple(needed) if c not in info["mapping"].values()]

    def converter(entry):
        info = found.setdefault(entry.uri, {})
        comma = delimiter_of(entry, delimiter) != ","

        def convert(text: pa.Table) -> pa.Table | None:
            if "mapping" not in info:  # the first batch decides for the file
                header(info, [c for c in text.column_names if c != ROW])
            if info["missing"]:
                return None
            info["batches"] = info.get("batches", 0) + 1
            if info["batches"] % 8 == 0:  # the parsed text of the batches before (see system_memory_pool)
                pa.default_memory_pool().release_unused()
            typed = _typed(text, info["mapping"], entry.uri, index[entry.uri], uniform, info, date_format, comma,
                           parse)
            if wanted is not None:
                mine = typed.filter(pc.fill_null(pc.is_in(typed["ticker"], value_set=wanted), False))
                info["elsewhere"] = info.get("elsewhere", 0) + typed.num_rows - mine.num_rows
                typed = mine
            return typed
        return convert

    tables, rows_in = [], 0
    for entry, got in zip(listing.entries,
                          read_entries(listing.entries, endpoint_url, converter, delimiter=delimiter)):
        rows_in += got.rows_in
        for line, why in got.bad_rows:
            rejects.add(file=entry.uri, row=line, rows=1, action=DROP_ROW, reason=why)
        if got.unparsed > 0:
            rejects.add(file=entry.uri, rows=got.unparsed, action=DROP_ROWS,
                        reason=f"{got.unparsed} line(s) the CSV parser returned no row for")
        info = found.pop(entry.uri, {})
        elsewhere += info.get("elsewhere", 0)
        if "mapping" not in info and got.header:  # no row reached the converter: name what is missing anyway
            header(info, [c for c in got.header if c != ROW] + [k for k, _ in entry.partitions if k not in got.header])
        n_rows = got.rows_in - len(got.bad_rows) - max(got.unparsed, 0)
        why = _missing_reason(info, delimiter_of(entry, delimiter), entry.suffix) if info.get("missing") \
            else _date_order(info)
        if got.error:
            rejects.add(file=entry.uri, action=REJECT_SERIES, reason=got.error, rows=got.rows_in)
        elif n_rows == 0 and not info.get("missing"):
            rejects.add(file=entry.uri, action=REJECT_SERIES, reason="no data rows (header only)" if not got.rows_in
                        else f"no data rows: all {got.rows_in} line(s) rejected (see the row entries)")
        elif why:
            rejects.add(file=entry.uri, rows=n_rows, action=REJECT_SERIES, reason=why)
        elif got.table is not None:
            table = got.table
            if DMY in table.column_names:  # A/B/Y dates: the file settled the order (see _date_order)
                if info.get("day"):
                    table = table.set_column(table.column_names.index("date"), "date",
                                             pc.coalesce(table[DMY], table["date"]))
                table = table.drop_columns([DMY])
            tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if uniform:
        table = pa.table({f.name: table[f.name] if table is not None and f.name in table.column_names
                          else pa.nulls(table.num_rows if table is not None else 0, f.type) for f in ROW_SCHEMA},
                         schema=ROW_SCHEMA)
    return Rows(table, files, rejects.items, rows_in, elsewhere)


def _missing_reason(info: dict, delimiter: str, suffix: str = ".csv") -> str:
    """Why a file lacks a column the job needs, with the fix that works."""
    missing, names, mapping = info["missing"], info["names"], info["mapping"]
    head = f"missing column(s) {', '.join(missing)}; found {printable(', '.join(names), 120)}"
    other = [d for d in (",", ";", "\t", "|") if d != delimiter and len(names) == 1 and d in names[0]]
    if other:
        d = other[0]
        fix = ("name the file .tsv (or set data.delimiter to a tab)" if d == "\t" else
               "name the file .csv" + ("" if d == "," else f" and set data.delimiter={d!r}") if suffix != ".csv" else
               f"set data.delimiter={d!r} (score: delimiter)")
        return f"{head}. The header holds no {delimiter!r} but {'a tab' if d == chr(9) else repr(d)}: {fix}"
    adjusted = next((n for n, c in mapping.items() if c == "adj_close"), None)
    if missing == ["close"] and adjusted:
        return (f"{head}. It has an adjusted close ({printable(adjusted, 40)}): forecast that with "
                "data.target=adj_close data.features=[] (the target is always an input), or read it as the "
                f"close with data.columns={{{printable(adjusted, 40)}: close}} (score: columns)")
    inputs = [name for name, made_of in DERIVED.items() if set(made_of) & set(missing)]
    if inputs and "close" not in missing and set(missing) <= {c for name in inputs for c in DERIVED[name]}:
        return (f"{head}, which the input(s) {', '.join(inputs)} of data.features are made from. Map yours with "
                "data.columns (score: columns), or train without those inputs (data.features=[close, volatility] "
                "needs the close alone)")
    return f"{head}. Map yours with data.columns (score: columns), e.g. {{Price: close}}"


def _date_order(info: dict) -> str | None:
    """Why a file's D/M/Y or M/D/Y dates cannot be read (None when a day above 12 settles the order)."""
    day, month, either = info.get("day"), info.get("month"), info.get("either")
    if day and month:
        return (f"dates mix day-first ({printable(day, 30)}) and month-first ({printable(month, 30)}) spellings; "
                "set data.date_format (score: date_format) to the one that holds, e.g. %d/%m/%Y")
    if either and not day and not month:
        return (f"dates such as {printable(either, 30)} can be day-first or month-first, and no day above 12 in "
                "the file settles it; set data.date_format (score: date_format), e.g. %d/%m/%Y or %m/%d/%Y")
    return None


def _typed(text: pa.Table, mapping: dict[str, str], uri: str, index: int, uniform: bool, info: dict | None = None,
           date_format: str | None = None, comma: bool = False, parse: tuple[str, ...] = VALUE_COLUMNS) -> pa.Table:
    """A batch of one file's text rows as ``ROW_SCHEMA`` columns (only those the file has, unless
    ``uniform``); the ticker comes from the file name when the file has no ticker column. Of the
    value columns, only those in ``parse`` are read (the others are left as null).
    ``info``: the file's notes, where the spellings that settle A/B/Y dates are kept;
    ``comma``: a decimal comma may occur (the delimiter is not a comma)."""
    n = text.num_rows
    src = {canonical: text[name] for name, canonical in mapping.items()}
    problems: dict[int, dict] = {}

    def keep_text(mask, column):
        for i in np.flatnonzero(mask):
            problems.setdefault(int(i), {})[column] = src[column][int(i)].as_py()

    cols = {"ticker": pc.utf8_trim_whitespace(src["ticker"]) if "ticker" in src else
            pa.array([ticker_from_filename(uri)] * n, pa.string())}
    got = _parse_date_column(src["date"], date_format)
    # a date is unreadable when no reading works (the file's order, settled later, cannot help it)
    keep_text(np.isnat(got.dates) & (np.isnat(got.dmy) if got.dmy is not None else True), "date")
    cols["date"] = pa.array(got.dates, pa.timestamp("ns"), from_pandas=True)
    if got.dmy is not None:
        cols[DMY] = pa.array(got.dmy, pa.timestamp("ns"), from_pandas=True)
        if info is not None:
            for key in ("day", "month", "either"):
                info[key] = info.get(key) or getattr(got, key)
    present = [c for c in parse if c in src]
    comma = comma and any(pc.any(pc.match_substring_regex(src[c], r"\d,\d")).as_py() for c in present)
    for c in VALUE_COLUMNS:
        if c in present:
            v = _to_float(src[c], comma)
            keep_text(~np.isfinite(v), c)
            cols[c] = pa.array(v, pa.float64())  # NaN stays NaN: "not a number", not "no column"
        elif uniform:
            cols[c] = pa.nulls(n, pa.float64())
    cols[ROW] = pc.cast(text[ROW], pa.int32())  # a line number; half the memory of int64
    cols[FILE] = pa.array(np.full(n, index, dtype=np.int32))
    raw = [None] * n if problems else None
    for i, p in problems.items():
        raw[i] = json.dumps(p)
    # no problem in the batch: a column of type null, which takes no memory (concatenation makes it text
    # where other batches have some)
    cols[RAW] = pa.array(raw, pa.string()) if raw else pa.nulls(n, pa.string() if uniform else pa.null())
    return pa.table(cols)


def validate_rows(rows: Rows, *, needed: tuple[str, ...] = ("close",), min_rows: int = 1,
                  max_jump: float = 1.75) -> Histories:
    """Merge the rows of each ticker into one series and validate it (the table at the top)."""
    rejects = _Rejects()
    rejects.items = list(rows.rejects)
    series: dict[str, pd.DataFrame] = {}
    files_of: dict[str, np.ndarray] = {}
    for ticker, df in _by_ticker(rows, rejects, needed):
        mark = len(rejects.items)
        try:
            clean = _clean_series(rows.files, ticker, df, needed, min_rows, max_jump, rejects)
        except Exception as e:  # noqa: BLE001 - one bad series never stops the others
            del rejects.items[mark:]
            rejects.add(file=rows.files[df.file[0]], ticker=ticker, rows=len(df), action=REJECT_SERIES,
                        reason=f"failed to validate ({type(e).__name__}: {printable(e, 120)})")
            continue
        if clean is not None:
            series[ticker], files_of[ticker] = clean, np.unique(df.file)
    hist = Histories(series, rejects.frame(), rows.rows_in, rows.files, files_of=files_of,
                     rows_elsewhere=rows.elsewhere)
    # a file rejected whole counts all its rows, of wanted tickers or not: exact only for a full load
    assert rows.elsewhere or hist.rows_in == hist.rows_kept + hist.rows_rejected, "row accounting broke"
    return hist


def source_listing(source, endpoint_url: str | None = None) -> Listing:
    """The files under a URI, or under each of a list of them (``sources.list_source``)."""
    if not isinstance(source, list):
        return list_source(str(source), endpoint_url=endpoint_url)
    out = Listing(", ".join(map(str, source[:3])) + (" ..." if len(source) > 3 else ""))
    for s in source:
        one = list_source(str(s), endpoint_url=endpoint_url)
        out.entries += one.entries
        out.skipped += one.skipped
    return out


@dataclass
class _TickerRows:
    """One ticker's rows from every file, as arrays in file-then-line order."""

    dates: np.ndarray                  # datetime64[ns]; NaT where the date did not parse
    values: dict[str, np.ndarray]      # float64 for each value column this ticker's files have
    line: np.ndarray                   # data line of each row in its file
    file: np.ndarray                   # index of each row's file in Histories.files
    raw: Callable[[str, int], object]  # the text of column c at row k as read (for messages)
    bounds: list[tuple[int, str]] = field(default_factory=list)  # (row, why) outside [low, high] (_bounds)

    def __len__(self) -> int:
        return len(self.dates)


def _ticker_order(table: pa.Table, files: list[str], rejects) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Where each row of the table goes when rows are put in (ticker, file, line) order: ``at``
    (-1 for a row whose ticker is blank or not a ticker, named in ``rejects``), the tickers in
    that order, and where each one's rows start (and, last, how many rows there are)."""
    tick = table["ticker"]  # trimmed as it was read
    blank = pc.fill_null(pc.equal(tick, ""), True)
    # a ticker is short and printable; anything else is a broken line's text, never a series name
    odd = pc.or_(pc.or_(pc.greater(pc.utf8_length(tick), MAX_TICKER), pc.invert(pc.utf8_is_printable(tick))),
                 pc.match_substring(tick, '"'))
    drop = pc.or_(blank, pc.fill_null(odd, False))
    kept = None
    if pc.any(drop).as_py():
        bad = table.filter(drop)
        for f, r, t in zip(bad[FILE].to_numpy(), bad[ROW].to_numpy(), bad["ticker"].to_pylist()):
            rejects.add(file=files[f], row=int(r), rows=1, action=DROP_ROW,
                        reason="blank ticker" if not t else f"not a ticker: {_excerpt(t, 40)}")
        kept = np.flatnonzero(~drop.to_numpy(zero_copy_only=False))
    names = pc.unique(tick).to_pylist()
    codes = pc.index_in(tick, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
    rank = np.argsort(np.argsort(np.array(names, dtype=object))).astype(np.int32)  # alphabetical
    key = rank[codes] if kept is None else rank[codes[kept]]
    if _in_file_line_order(table):  # the usual: then a stable sort by ticker is enough
        order = np.argsort(key, kind="stable")
    else:  # rows the csv module recovered come after the batch they were cut from
        file, line = table[FILE].to_numpy(), table[ROW].to_numpy()
        order = np.lexsort((line, file, key) if kept is None else (line[kept], file[kept], key))
        del file, line
    del key
    if kept is not None:
        order = kept[order]  # positions in the table
    codes = codes[order]
    at = np.full(table.num_rows, -1, dtype=np.int32)
    at[order] = np.arange(len(order), dtype=np.int32)
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1, len(order)]
    return at, [names[k] for k in codes[starts[:-1]]], starts


def _in_file_line_order(table: pa.Table) -> bool:
    """Whether the rows are in (file, line) order, checked a batch at a time (no copy of a column)."""
    last = (-1, -1)
    for b in table.select([FILE, ROW]).to_batches():
        if not b.num_rows:
            continue
        file, line = b.column(0).to_numpy(), b.column(1).to_numpy()
        step = np.diff(file)
        if (file[0], line[0]) <= last or not ((step > 0) | ((step == 0) & (np.diff(line) > 0))).all():
            return False
        last = (file[-1], line[-1])
    return True


def _by_ticker(rows: Rows, rejects, needed: tuple[str, ...]):
    """Yield ``(ticker, rows)`` in ticker order, each holding the ticker's rows from every file,
    ordered by file then line (``_TickerRows``: the columns in ``needed``, and the checks
    against high and low).

    Memory: the rows' table is taken from ``rows`` and moved into arrays in that order one record
    batch at a time, each batch released once its rows are placed, so the data is never held
    twice; each ticker's rows are then slices (views) of those arrays, and a series that keeps all
    its rows shares them (``_clean_series``)."""
    table, rows.table, files = rows.table, None, rows.files
    if table is None or table.num_rows == 0:
        return
    at, tickers, starts = _ticker_order(table, files, rejects)
    n = int(starts[-1])
    present = [c for c in VALUE_COLUMNS if c in table.column_names and c in needed]
    line, file, dates = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, "datetime64[ns]")
    values = {c: np.empty(n, np.float64) for c in present}
    has = {c: np.zeros(len(files), bool) for c in present}  # a file has the column (else its rows are null)
    raw: dict[int, str] = {}
    bounds: dict[int, str] = {}
    batches = table.to_batches()
    del table
    start = 0
    for i in range(len(batches)):
        b, batches[i] = batches[i], None
        pos = at[start:start + b.num_rows]
        start += b.num_rows
        sel = pos >= 0
        if not sel.all():
            pos = pos[sel]
            b = b.filter(pa.array(sel))
        from_file = b.column(FILE).to_numpy()
        line[pos], file[pos] = b.column(ROW).to_numpy(), from_file
        dates[pos] = b.column("date").to_numpy(zero_copy_only=False)
        for c in present:
            col = b.column(c)
            values[c][pos] = col.to_numpy(zero_copy_only=False)
            if col.null_count < len(col):
                has[c][np.unique(from_file if not col.null_count else
                                 from_file[col.is_valid().to_numpy(zero_copy_only=False)])] = True
        bounds.update({int(pos[k]): why for k, why in _bounds(b, needed).items()})
        text = b.column(RAW)
        if text.null_count < len(text):
            raw.update({int(pos[k]): t for k, t in enumerate(text.to_pylist()) if t is not None})
        del b, text
        pa.default_memory_pool().release_unused()  # hand this batch's pages back (see system_memory_pool)
    del at
    out_of_bounds = np.array(sorted(bounds), dtype=np.int64)
    for t, a, b in zip(tickers, starts[:-1], starts[1:]):
        of = np.unique(file[a:b])
        yield t, _TickerRows(dates[a:b], {c: values[c][a:b] for c in present if has[c][of].any()},
                             line[a:b], file[a:b], lambda c, k, a=a: json.loads(raw.get(a + k) or "{}").get(c),
                             [(int(k) - a, bounds[int(k)]) for k in
                              out_of_bounds[np.searchsorted(out_of_bounds, a):np.searchsorted(out_of_bounds, b)]])


def _bounds(batch: pa.RecordBatch, needed: tuple[str, ...]) -> dict[int, str]:
    """``{row: why}`` for each row of a batch whose high is below its low, or whose open or close
    (those the job uses) lies outside [low, high]. Checked batch by batch, as the rows are placed,
    so that high and low need not be kept when the job does not use them."""
    if "high" not in batch.schema.names or "low" not in batch.schema.names:
        return {}
    h, lo = (batch.column(c).to_numpy(zero_copy_only=False) for c in ("high", "low"))
    out: dict[int, str] = {}
    with np.errstate(invalid="ignore"):  # NaN: no value to check against (no column, or not a number)
        for i in np.flatnonzero(h < lo):
            out[int(i)] = f"high < low ({h[i]:g} < {lo[i]:g})"
        for c in [c for c in ("open", "close") if c in needed and c in batch.schema.names]:
            v = batch.column(c).to_numpy(zero_copy_only=False)
            for i in np.flatnonzero((v > h * (1 + 1e-6)) | (v < lo * (1 - 1e-6))):
                out.setdefault(int(i), f"{c} outside [low, high]: {v[i]:g} not in [{lo[i]:g}, {h[i]:g}]")
    return out


_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_COMMA_NUMBER = r"^[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?$"  # 45,07  1.234,56  1.234.567


def _to_float(col: pa.ChunkedArray, comma: bool = False) -> np.ndarray:
    """Text to float64, NaN where it is not a number (the row checks name the text). ``comma``:
    the batch writes decimal commas, so a number spelled that way has ``.`` between thousands."""
    text = pc.utf8_trim_whitespace(col)
    if comma:
        euro = pc.match_substring_regex(text, _COMMA_NUMBER)
        text = pc.if_else(euro, pc.replace_substring(pc.replace_substring(text, ".", ""), ",", "."), text)
    try:
        out = pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # some text is not a number: those become null
        out = pc.cast(pc.if_else(pc.match_substring_regex(text, _NUMBER), text, pa.scalar(None, pa.string())),
                      pa.float64())
    return out.to_numpy(zero_copy_only=False)


_TIME = r"(?:[T ]+\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[AaPp][Mm])?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?)?"
_YMD = rf"^(?P<y>\d{{4}})[-/.](?P<m>\d{{1,2}})[-/.](?P<d>\d{{1,2}}){_TIME}$"  # ISO 8601 and Y/M/D
_COMPACT = r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$"                         # 20130208
_AB_Y = rf"^(?P<a>\d{{1,2}})[/.\-](?P<b>\d{{1,2}})[/.\-](?P<y>\d{{4}}|\d{{2}}){_TIME}$"  # D/M/Y or M/D/Y
DMY = "__date_dmy"  # the day-first reading of a batch's A/B/Y dates, until the file decides


@dataclass
class _Dates:
    """A date column parsed: ``dates`` (day precision; A/B/Y dates read month-first), ``dmy`` (the
    day-first reading where A/B/Y dates occur, else None) and example spellings that settle the
    order: ``day`` (first number above 12), ``month`` (second above 12), ``either`` (both 12 or less)."""

    dates: np.ndarray
    dmy: np.ndarray | None = None
    day: str | None = None
    month: str | None = None
    either: str | None = None


def _parse_date_column(col: pa.ChunkedArray, date_format: str | None = None) -> _Dates:
    """Dates as datetime64[ns] calendar dates, NaT where unparseable; each distinct spelling is
    parsed once. A time of day and a UTC offset are dropped: the date is the one written."""
    text = pc.utf8_trim_whitespace(col)
    uniq = pc.unique(text)
    got = _parse_dates(uniq, date_format)
    pos = pc.fill_null(pc.index_in(text, value_set=uniq), -1).to_numpy(zero_copy_only=False)

    def spread(values: np.ndarray) -> np.ndarray:
        return np.where(pos >= 0, values[np.maximum(pos, 0)], np.datetime64("NaT", "ns"))

    got.dates = spread(got.dates)
    if got.dmy is not None:
        got.dmy = spread(got.dmy)
    return got


def _parse_dates(uniq: pa.Array, date_format: str | None) -> _Dates:
    n = len(uniq)
    out = np.full(n, np.datetime64("NaT", "ns"))
    todo = np.ones(n, dtype=bool)
    for pattern in (_YMD, _COMPACT):
        if not todo.any():  # a file's few spellings are mostly all ISO: each pattern costs calls per file
            break
        y, m, d = _groups(uniq, pattern, "ymd")
        hit = todo & (y >= 0)
        out[hit], todo = _ymd(y, m, d)[hit], todo & ~hit
    got = _Dates(out)
    if date_format is None and todo.any():
        a, b, y = _groups(uniq, _AB_Y, "aby")
        hit = todo & (y >= 0)
        if hit.any():
            y = np.where(y < 100, np.where(y <= 68, y + 2000, y + 1900), y)  # as strptime reads %y
            got.dmy = out.copy()
            out[hit], got.dmy[hit], todo = _ymd(y, a, b)[hit], _ymd(y, b, a)[hit], todo & ~hit
            text = uniq.to_numpy(zero_copy_only=False)
            day, month = (a >= 1) & (a <= 12), (b >= 1) & (b <= 12)  # could be a month
            for key, mask in (("day", (a > 12) & (a <= 31) & month), ("month", (b > 12) & (b <= 31) & day),
                              ("either", (a != b) & day & month)):
                first = np.flatnonzero(hit & mask)
                setattr(got, key, str(text[first[0]]) if len(first) else None)
    if todo.any():  # other spellings (8 Feb 2013, Feb 8, 2013) or date_format: slower, only these
        rest = pd.Series(uniq.filter(pa.array(todo)).to_pylist(), dtype=object)
        out[todo] = _parse_other(rest, date_format)
        if got.dmy is not None:
            got.dmy[todo] = out[todo]
    return got


def _groups(uniq: pa.Array, pattern: str, names: str) -> tuple[np.ndarray, ...]:
    """The named groups of ``pattern`` as integers, -1 where a value does not match."""
    found = pc.extract_regex(uniq, pattern)
    return tuple(pc.fill_null(pc.cast(pc.struct_field(found, k), pa.int64()), -1).to_numpy(zero_copy_only=False)
                 for k in names)


def _ymd(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """datetime64[ns] from year, month and day numbers; NaT where there is no such day."""
    ok = (y >= 1) & (y <= 9999) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= 31)
    month = np.where(ok, (y - 1970) * 12 + m - 1, 0).astype("datetime64[M]")
    day = month.astype("datetime64[D]") + np.where(ok, d - 1, 0)
    ok &= day.astype("datetime64[M]") == month  # 31 April, 29 February 2013
    return np.where(ok, day.astype("datetime64[ns]"), np.datetime64("NaT", "ns"))


def _parse_other(text: pd.Series, date_format: str | None) -> np.ndarray:
    def calendar(d) -> np.ndarray:
        d = pd.DatetimeIndex(d)
        return (d.tz_localize(None) if d.tz is not None else d).normalize().to_numpy(dtype="datetime64[ns]")

    try:
        return calendar(pd.to_datetime(text, errors="coerce", format=date_format or "mixed"))
    except (ValueError, TypeError, OverflowError):  # offsets differ (daylight saving): one at a time
        one = []
        for t in text:
            try:
                v = pd.to_datetime(t, errors="coerce", format=date_format or "mixed")
            except (ValueError, TypeError, OverflowError):
                v = pd.NaT
            one.append(pd.NaT if pd.isna(v) else v.tz_localize(None) if v.tzinfo else v)
        return calendar(one)


def _clean_series(files, ticker, s: _TickerRows, needed, min_rows, max_jump, rejects) -> pd.DataFrame | None:
    """Validate one ticker's rows (from one or many files): drop bad rows, order by date, cut
    at a split; None when the series is rejected. Every row lost is recorded in ``rejects``."""
    where = files[s.file[0]] if (s.file == s.file[0]).all() else \
        f"{len(np.unique(s.file))} files: {files[s.file[0]]} ..."
    missing = [c for c in needed if c not in s.values]
    if missing:  # every file of this ticker lacks the column (files of other tickers have it)
        rejects.add(file=where, ticker=ticker, rows=len(s), action=REJECT_SERIES,
                    reason=f"missing column(s) {', '.join(missing)} in every row of {ticker}")
        return None
    reason = _row_problems(s, needed)
    ok = reason == None  # noqa: E711
    seen = pd.Series(s.dates).where(ok)
    dup = seen.duplicated(keep="first").to_numpy() & ok
    if dup.any():
        pos = np.flatnonzero(ok)
        first = dict(zip(seen.iloc[pos[::-1]], pos[::-1]))
        for i in np.flatnonzero(dup):
            j = first[seen.iloc[i]]
            there = f"row {s.line[j]}" + (f" of {files[s.file[j]]}" if s.file[j] != s.file[i] else "")
            differ = [c for c in needed if s.values[c][i] != s.values[c][j]]
            reason[i] = (f"duplicate date; first at {there}" if not differ else
                         f"duplicate date with another {differ[0]} ({s.values[differ[0]][i]:g}; first at {there}: "
                         f"{s.values[differ[0]][j]:g}, kept)")
    for i in np.flatnonzero(reason != None):  # noqa: E711
        d = s.dates[i]
        rejects.add(file=files[s.file[i]], ticker=ticker, row=int(s.line[i]), rows=1, action=DROP_ROW,
                    date=None if np.isnat(d) else str(d)[:10], reason=reason[i])
    keep = reason == None  # noqa: E711
    n_in, n_bad = len(s), int((~keep).sum())
    if n_in and n_bad * 2 > n_in:
        rejects.add(file=where, ticker=ticker, rows=n_in - n_bad, action=REJECT_SERIES,
                    reason=f"mostly invalid: {n_bad} of {n_in} rows rejected (see the row entries)")
        return None

    used = [c for c in VALUE_COLUMNS if c in needed]  # the series holds what the job asked for
    if keep.all():  # the common case: the series shares the arrays _by_ticker made (no copy)
        out = pd.DataFrame({"date": s.dates, **{c: s.values[c] for c in used}}, copy=False)
    else:
        out = pd.DataFrame({"date": s.dates[keep], **{c: s.values[c][keep] for c in used}})
    at = np.flatnonzero(keep)  # each row's place in s, for rejects that name its file and line
    if not out["date"].is_monotonic_increasing:
        rejects.add(file=where, ticker=ticker, action=NOTE, reason="dates were not in order; sorted")
        order = np.argsort(out["date"].to_numpy(), kind="stable")
        out, at = out.iloc[order].reset_index(drop=True), at[order]
    out = _drop_spikes(out, at, files, s, ticker, needed, max_jump, rejects)
    out = _cut_at_split(out, where, ticker, needed, max_jump, rejects)
    if len(out) < min_rows:
        rejects.add(file=where, ticker=ticker, rows=len(out), action=REJECT_SERIES,
                    reason=f"too short: {len(out)} valid rows, need at least {min_rows} for this job's window "
                           "and horizon")
        return None
    return out


def _row_problems(s: _TickerRows, needed) -> np.ndarray:
    """The first problem of each row (None where the row is fine), row by row rules only."""
    reason = np.full(len(s), None, dtype=object)

    def flag(mask, message):
        # First reason wins; messages are formatted only for the (few) rows newly flagged.
        for i in np.flatnonzero(np.asarray(mask) & (reason == None)):  # noqa: E711
            reason[i] = message(i)

    values = s.values
    flag(np.isnat(s.dates), lambda i: f"unparseable date {_excerpt(s.raw('date', i), 40)}")
    with np.errstate(invalid="ignore"):
        for c in needed:
            v = values[c]
            flag(~np.isfinite(v), lambda i, c=c: f"non-numeric, missing or infinite {c}: {_excerpt(s.raw(c, i), 40)}")
            if c == "volume":
                flag(v < 0, lambda i, v=v: f"negative volume: {v[i]:g}")
            else:
                flag(v <= 0, lambda i, c=c, v=v: f"non-positive {c}: {v[i]:g}")
    for i, why in s.bounds:  # last: the checks against high and low, made as the rows were placed
        if reason[i] is None:
            reason[i] = why
    return reason


def _price(needed) -> str | None:
    return "close" if "close" in needed else next((c for c in needed if c in PRICE_COLUMNS), None)


def _drop_spikes(out, at, files, s: _TickerRows, ticker, needed, max_jump, rejects) -> pd.DataFrame:
    """Drop one-day spikes: a row that moves beyond ``max_jump`` from the day before and moves
    back the next day (the day after is within ``max_jump`` of the day before). A split is a level
    change that persists; a spike that reverts is one bad row."""
    price = _price(needed)
    if price is None or len(out) < 3:
        return out
    p = out[price].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        up, back, span = p[1:-1] / p[:-2], p[2:] / p[1:-1], p[2:] / p[:-2]
        big = lambda r: (r > max_jump) | (r < 1 / max_jump)  # noqa: E731
        spike = big(up) & big(back) & ~big(span) & ((up > 1) != (back > 1))
    drop = []
    for k in np.flatnonzero(spike) + 1:  # few; two in a row: the first is the spike, the second its return
        if not drop or drop[-1] != k - 1:
            drop.append(int(k))
    for k in drop:
        i = int(at[k])
        rejects.add(file=files[s.file[i]], ticker=ticker, row=int(s.line[i]), rows=1, action=DROP_ROW,
                    date=out["date"].iloc[k].date().isoformat(),
                    reason=f"one-day spike: {price} moved x{p[k] / p[k - 1]:.2f}, then x{p[k + 1] / p[k]:.2f} back "
                           f"the next day (max_jump={max_jump:g}); the row is dropped, not the history before it")
    return out.drop(index=drop).reset_index(drop=True) if drop else out


def _cut_at_split(out, where, ticker, needed, max_jump, rejects) -> pd.DataFrame:
    """Drop the rows before the last one-day move beyond ``max_jump`` (an unadjusted split)."""
    price = _price(needed)
    if price is None or len(out) < 2:
        return out
    ratio = out[price].to_numpy()[1:] / out[price].to_numpy()[:-1]
    jumps = np.flatnonzero((ratio > max_jump) | (ratio < 1 / max_jump))
    if not len(jumps):
        return out
    cut = int(jumps[-1]) + 1
    day = out["date"].iloc[cut].date().isoformat()
    rejects.add(file=where, ticker=ticker, date=day, rows=cut, action=DROP_ROWS,
                reason=f"{cut} rows before {day} dropped: {price} moved x{ratio[cut - 1]:.2f} in one day "
                       f"(unadjusted split or spin-off; max_jump={max_jump:g})")
    return out.iloc[cut:].reset_index(drop=True)
