"""Stock histories: load per-ticker files or long tables, validate with reasons.

Every input row is accounted for: ``rows_in == rows_kept + rejects.rows.sum()``.
What happens to a bad row, by reason (first matching reason wins):

====================================  =====================================================
reason                                action
====================================  =====================================================
wrong number of fields, blank ticker  the row is dropped
unparseable date                      the row is dropped
non-numeric / NaN / inf value         the row is dropped (only columns the job uses count:
                                      NaN in ``open`` does not matter when only ``close``
                                      is a feature)
non-positive price, negative volume   the row is dropped
high < low, close outside [low, high] the row is dropped (a one-day glitch, e.g. LNT's
                                      halved close on 2016-05-19)
duplicated date                       later copies are dropped, the first is kept
dates out of order                    the series is sorted; a note is recorded, no row lost
close moves by more than ``max_jump``  rows before the jump are dropped: an unadjusted split
  in one day                          or spin-off (EBAY, NI) makes the older prices
                                      incomparable, and the recent part is what forecasts use
more than half the rows invalid       the whole series is rejected (a mislabelled or
                                      corrupted file)
fewer rows than ``min_rows``          the whole series is rejected (too short to window)
unreadable file, not UTF-8, empty,    the whole file is rejected
  missing a required column
ticker already loaded from a file     the later file's series is rejected
====================================  =====================================================
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")
CANONICAL = ("date", "ticker") + PRICE_COLUMNS + ("volume",)

# Normalised spelling (lower case, spaces and dashes as underscores) -> canonical column.
ALIASES = {
    "date": "date", "timestamp": "date", "datetime": "date", "time": "date", "day": "date",
    "open": "open", "high": "high", "low": "low", "close": "close",
    "adj_close": "adj_close", "adjclose": "adj_close", "adjusted_close": "adj_close",
    "volume": "volume", "vol": "volume",
    "name": "ticker", "ticker": "ticker", "symbol": "ticker",
}
REJECT_COLUMNS = ["file", "ticker", "row", "date", "rows", "action", "reason"]
SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Histories:
    """Clean series by ticker plus every rejected row or series with its reason.

    Each series is a DataFrame with a ``date`` column (datetime64, strictly increasing) and
    the canonical price/volume columns the job asked for, as float64.
    ``rejects`` has one line per dropped row (``rows == 1``), per dropped block or rejected
    series (``rows`` = rows lost) and per note (``rows == 0``). ``row`` is the 1-based data
    row within the file (the header is not counted: in a CSV, the line is ``row + 1``).
    """

    series: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    rows_in: int
    files: list[str] = field(default_factory=list)

    @property
    def rows_kept(self) -> int:
        return int(sum(len(s) for s in self.series.values()))

    @property
    def rows_rejected(self) -> int:
        return int(self.rejects["rows"].sum())

    def rejected_series(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == "reject_series"]

    def summary(self) -> str:
        """One line of counts, then each rejected series with its reason."""
        lines = [f"{len(self.files)} file(s), {self.rows_in} rows: {self.rows_kept} kept, "
                 f"{self.rows_rejected} rejected; {len(self.series)} series kept, "
                 f"{len(self.rejected_series())} rejected"]
        for r in self.rejected_series().itertuples():
            lines.append(f"  rejected {r.ticker or '?'} ({Path(r.file).name}): {r.reason}")
        return "\n".join(lines)


def list_history_files(path: str | Path, recursive: bool = False) -> list[Path]:
    """History files under a folder (sorted), or the file itself."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder (set data.path to a folder of CSV/Parquet "
                        "histories, or leave it null for the bundled sample)")
    pattern = "**/*" if recursive else "*"
    files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{p}: no .csv or .parquet files found")
    return files


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


def ticker_from_filename(path: Path) -> str:
    """``AAPL_data.csv`` -> ``AAPL``; ``NYSE:NBL_data.csv`` -> ``NYSE:NBL``."""
    return re.sub(r"[_\-]data$", "", path.stem, flags=re.IGNORECASE)


class _Rejects:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, file, ticker, row, date, rows, action, reason):
        self.items.append(dict(file=str(file), ticker=ticker, row=row, date=date, rows=int(rows),
                               action=action, reason=reason))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.items, columns=REJECT_COLUMNS)
        return df.astype({"rows": "int64"})


def _read_csv_rows(path: Path, rejects: _Rejects) -> tuple[pd.DataFrame | None, int]:
    """Read a CSV as strings. Rows with the wrong number of fields are rejected with their row."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        rejects.add(path, None, None, None, 0, "reject_series",
                    f"not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8")
        return None, 0
    except OSError as e:
        rejects.add(path, None, None, None, 0, "reject_series", f"cannot read file: {e.strerror}")
        return None, 0
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        rejects.add(path, None, None, None, 0, "reject_series", "empty file (no header, no rows)")
        return None, 0
    header, body = rows[0], rows[1:]
    good, rownums = [], []
    for i, r in enumerate(body, start=1):
        if len(r) == len(header):
            good.append(r)
            rownums.append(i)
        else:
            snippet = ",".join(r)[:60]
            rejects.add(path, None, i, None, 1, "drop_row",
                        f"{len(r)} fields where the header has {len(header)}: {snippet!r}")
    df = pd.DataFrame(good, columns=header, dtype=object)
    df.index = pd.Index(rownums, name="row")
    return df, len(body)


def _read_table(path: Path, rejects: _Rejects) -> tuple[pd.DataFrame | None, int]:
    if path.suffix.lower() == ".csv":
        return _read_csv_rows(path, rejects)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
        rejects.add(path, None, None, None, 0, "reject_series", f"cannot read Parquet: {e}")
        return None, 0
    df.index = pd.Index(np.arange(1, len(df) + 1), name="row")
    return df, len(df)


def load_histories(
    path: str | Path | list[Path],
    *,
    needed: tuple[str, ...] = ("close",),
    columns: dict[str, str] | None = None,
    min_rows: int = 1,
    max_jump: float = 1.75,
    recursive: bool = False,
) -> Histories:
    """Load and validate every history file under ``path`` (a folder, a file, or a file list).

    ``needed``: the canonical value columns the job uses (features and target); only these
    must be valid on a row. ``min_rows``: shortest usable series after cleaning.
    """
    files = path if isinstance(path, list) else list_history_files(path, recursive)
    rejects = _Rejects()
    series: dict[str, pd.DataFrame] = {}
    source: dict[str, Path] = {}
    rows_in = 0
    for f in files:
        raw, n = _read_table(Path(f), rejects)
        rows_in += n
        if raw is None:
            continue
        if n == 0:
            rejects.add(f, None, None, None, 0, "reject_series", "no data rows (header only)")
            continue
        for ticker, df in _split_by_ticker(Path(f), raw, needed, columns, rejects):
            clean = _clean_series(Path(f), ticker, df, needed, min_rows, max_jump, rejects)
            if clean is None:
                continue
            if ticker in series:
                rejects.add(f, ticker, None, None, len(clean), "reject_series",
                            f"duplicate ticker: {ticker} was already loaded from {source[ticker]}")
                continue
            series[ticker], source[ticker] = clean, Path(f)
    hist = Histories(series, rejects.frame(), rows_in, [str(f) for f in files])
    assert hist.rows_in == hist.rows_kept + hist.rows_rejected, "row accounting broke"
    return hist


def _split_by_ticker(path, raw, needed, columns, rejects):
    """Rename columns, check the required ones exist, yield (ticker, frame) pairs."""
    mapping = normalise_columns(list(raw.columns), columns)
    df = raw[list(mapping)].rename(columns=mapping)
    missing = [c for c in ("date",) + tuple(needed) if c not in df.columns]
    if missing:
        rejects.add(path, None, None, None, len(df), "reject_series",
                    f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, raw.columns))}. "
                    "Map yours with data.columns, e.g. {Price: close}")
        return
    if "ticker" not in df.columns:
        yield ticker_from_filename(path), df
        return
    tick = df["ticker"].astype("string").str.strip()
    blank = tick.isna() | (tick == "")
    for row in df.index[blank]:
        rejects.add(path, None, int(row), None, 1, "drop_row", "blank ticker")
    for ticker, part in df[~blank].groupby(tick[~blank], sort=True):
        yield str(ticker), part.drop(columns="ticker")


def _parse_dates(raw: pd.Series) -> pd.Series:
    text = raw.astype(str).str.strip()
    dates = pd.to_datetime(text, errors="coerce", format="ISO8601")
    if dates.isna().any():  # other spellings (e.g. 02/08/2013): slower, only where needed
        dates = dates.fillna(pd.to_datetime(text[dates.isna()], errors="coerce", format="mixed"))
    return dates


def _clean_series(path, ticker, df, needed, min_rows, max_jump, rejects) -> pd.DataFrame | None:
    n_in = len(df)
    reason = np.full(n_in, None, dtype=object)

    def flag(mask, message):
        # First reason wins; messages are formatted only for the (few) rows newly flagged.
        for i in np.flatnonzero(np.asarray(mask) & (reason == None)):  # noqa: E711
            reason[i] = message(i)

    dates = _parse_dates(df["date"])
    raw_date = df["date"].to_numpy()
    flag(dates.isna().to_numpy(), lambda i: f"unparseable date {str(raw_date[i])[:40]!r}")

    present = [c for c in PRICE_COLUMNS + ("volume",) if c in df.columns]
    values = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
              for c in present}
    with np.errstate(invalid="ignore"):
        for c in needed:
            v, raw = values[c], df[c].to_numpy()
            flag(~np.isfinite(v), lambda i, c=c, raw=raw: f"non-numeric, missing or infinite {c}: "
                                                          f"{str(raw[i])[:40]!r}")
            if c == "volume":
                flag(v < 0, lambda i, v=v: f"negative volume: {v[i]:g}")
            else:
                flag(v <= 0, lambda i, c=c, v=v: f"non-positive {c}: {v[i]:g}")
        if "high" in values and "low" in values:
            h, lo = values["high"], values["low"]
            flag(h < lo, lambda i: f"high < low ({h[i]:g} < {lo[i]:g})")
            for c in [c for c in ("open", "close") if c in needed]:
                v = values[c]
                flag((v > h * (1 + 1e-6)) | (v < lo * (1 - 1e-6)),
                     lambda i, c=c, v=v: f"{c} outside [low, high]: {v[i]:g} not in [{lo[i]:g}, {h[i]:g}]")
    ok = reason == None  # noqa: E711
    seen = pd.Series(dates.to_numpy()).where(ok)
    first = dict(zip(seen[ok][::-1], df.index[ok][::-1]))
    flag(seen.duplicated(keep="first").to_numpy() & ok,
         lambda i: f"duplicate date; first at row {first[seen.iloc[i]]}")

    for i in np.flatnonzero(reason != None):  # noqa: E711
        d = dates.iloc[i]
        rejects.add(path, ticker, int(df.index[i]), None if pd.isna(d) else d.date().isoformat(), 1,
                    "drop_row", reason[i])
    keep = reason == None  # noqa: E711
    n_bad = int((~keep).sum())
    if n_in and n_bad * 2 > n_in:
        rejects.add(path, ticker, None, None, n_in - n_bad, "reject_series",
                    f"mostly invalid: {n_bad} of {n_in} rows rejected (see the row entries)")
        return None

    out = pd.DataFrame({"date": dates.to_numpy()[keep]})
    for c in present:
        out[c] = values[c][keep]
    if not out["date"].is_monotonic_increasing:
        rejects.add(path, ticker, None, None, 0, "note", "dates were not in order; sorted")
        out = out.sort_values("date", kind="stable")
    out = out.reset_index(drop=True)

    price = "close" if "close" in needed else next((c for c in needed if c in PRICE_COLUMNS), None)
    if price is not None and len(out) > 1:
        ratio = out[price].to_numpy()[1:] / out[price].to_numpy()[:-1]
        jumps = np.flatnonzero((ratio > max_jump) | (ratio < 1 / max_jump))
        if len(jumps):
            cut = int(jumps[-1]) + 1
            day = out["date"].iloc[cut].date().isoformat()
            rejects.add(path, ticker, None, day, cut, "drop_rows",
                        f"{cut} rows before {day} dropped: {price} moved x{ratio[cut - 1]:.2f} in one day "
                        f"(unadjusted split or spin-off; max_jump={max_jump:g})")
            out = out.iloc[cut:].reset_index(drop=True)

    if len(out) < min_rows:
        rejects.add(path, ticker, None, None, len(out), "reject_series",
                    f"too short: {len(out)} valid rows, need at least {min_rows} for this job's window and horizon")
        return None
    return out
