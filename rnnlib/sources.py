"""Where histories and corpora come from: a URI (local path, ``file://``, ``s3://``) to a file,
a folder or a prefix, in the layouts real feeds produce.

Listing walks the whole tree below the URI. Every entry is either read or skipped with a reason
(``Listing.skipped``), so nothing vanishes without a word:

=====================================  ==================================================
entry                                  what happens
=====================================  ==================================================
``*.csv``, ``*.tsv``                   read with ``pyarrow.csv`` (``.tsv``: tab-separated)
... plus ``.gz``, ``.bz2``, ``.zst``,  decompressed while reading
``.lz4``
``*.parquet``, ``*.pq``                read with ``pyarrow.parquet``
``key=value/`` folders (Hive style)    each key becomes a column of the files below it
                                       (``date=2026-11-27/part-0.parquet`` gives every row
                                       that date); a column in the file wins over the key
names starting with ``_`` or ``.``     skipped: markers and hidden files (``_SUCCESS``,
                                       ``.crc``, ``.DS_Store``), as Spark and Hive readers do
any other suffix                       skipped, with the reason
a link that leads nowhere              skipped (dangling link)
a link that leads outside the root     skipped, not followed
=====================================  ==================================================

Reading streams a file a batch at a time and keeps what it says: every column as text (the
caller's converter parses values, ``stocks.read_rows`` names each bad one), plus ``ROW``, the
1-based data line in the file (the header is line 0). Text corpora (``.txt``) come from the same
listing.

A CSV file is read line by line: each line after the header is one row, kept or rejected with a
reason (``FileRead.rows_in`` counts the lines, as ``wc -l`` does, less the header). A quote does
not carry a field over a line break, so one stray quote costs its own line, never the rest of the
file; fields in quotes lose them, and a line whose quotes hold the delimiter is split by the csv
module. A line over 128 KiB is cut out with its reason (it would stall the parser). A file that
is not CSV text at all (binary, compressed under a .csv name, UTF-16, an HTML error page, JSON)
is rejected whole, with all its lines and a reason that says what it is. Nothing inside a file
raises: one bad file never stops the others.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .errors import DataError, UserError

ROW = "__row"  # the column holding each row's data line in its file
DELIMITERS = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet", ".pq")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
HISTORY_SUFFIXES = tuple(DELIMITERS) + PARQUET


@dataclass(frozen=True)
class Entry:
    """A file under the source URI that will be read."""

    uri: str
    size: int
    mtime: float
    suffix: str  # ".csv", ".tsv", ".parquet" or ".pq"
    compression: str | None = None
    partitions: tuple[tuple[str, str], ...] = ()  # Hive keys of the folders above it, outermost first

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        d = json.loads(text)
        return cls(**{**d, "partitions": tuple(tuple(p) for p in d["partitions"])})


@dataclass
class Listing:
    """What a URI holds: the files to read and every entry not read, with why."""

    uri: str
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)

    def key(self) -> list[tuple[str, int, float]]:
        """``(uri, size, mtime)`` of every file read: what a run id or fingerprint hashes."""
        return [(e.uri, e.size, e.mtime) for e in self.entries]


def classify(name: str, suffixes: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """``(suffix, compression, reason skipped)`` for a file name."""
    low = name.lower()
    if low.startswith(("_", ".")):
        return None, None, "marker or hidden file (name starts with '_' or '.'), not data"
    stem, ext = posixpath.splitext(low)
    compression = COMPRESSIONS.get(ext)
    if compression:
        stem, ext = posixpath.splitext(stem)
        if ext in PARQUET:  # Parquet compresses inside the file; an outer layer is not readable
            return None, None, f"compressed Parquet ({name}) is not readable; store .parquet as is"
    if ext in suffixes:
        return ext, compression, None
    want = ", ".join(suffixes)
    return None, None, f"not a data file: suffix {ext or '(none)'!r}; readable suffixes are {want}" + (
        " (optionally .gz, .bz2, .zst or .lz4)" if any(s in DELIMITERS for s in suffixes) else "")


def list_source(uri: str, suffixes: tuple[str, ...] = HISTORY_SUFFIXES,
                endpoint_url: str | None = None) -> Listing:
    """Every entry under ``uri`` (recursively), sorted: files to read and entries skipped.

    Raises ``DataError`` when the URI does not exist or nothing under it is readable, naming the
    URI and what was found instead.
    """
    uri = str(uri)
    listing = Listing(uri)
    fs, root = storage.filesystem(uri, endpoint_url)
    bucket = root.split("/")[0]
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            found = _walk_local(uri, root, listing) if isinstance(fs, pafs.LocalFileSystem) else [
                (u, size, mtime, _partitions(posixpath.dirname(u[len(uri.rstrip("/")) + 1:])))
                for u, size, mtime in storage.list_files(uri, recursive=True, endpoint_url=endpoint_url)]
        elif info.type == pafs.FileType.File:
            found = [(uri, info.size, storage.mtime(info), ())]
        elif storage.is_s3(uri) and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: the bucket {bucket} does not exist (or these credentials cannot see it); "
                            "check the bucket name and the endpoint")
    except OSError as e:
        raise UserError(storage.access_error(uri, e, endpoint_url)) from None
    if info.type not in (pafs.FileType.File, pafs.FileType.Directory):
        raise DataError(f"{uri}: no such file or folder{' (nor an S3 prefix)' if storage.is_s3(uri) else ''}; "
                        "set data.path (score: input) to a file, folder or s3:// prefix of histories, or null "
                        "for the bundled sample")
    for u, size, mtime, parts in sorted(found):
        suffix, compression, why = classify(posixpath.basename(u), suffixes)
        if why:
            listing.skipped.append((u, why))
        else:
            listing.entries.append(Entry(u, size, mtime, suffix, compression, parts))
    listing.skipped.sort()
    if not listing.entries:
        seen = f"; found {len(listing.skipped)} other entr{'y' if len(listing.skipped) == 1 else 'ies'}, " \
               f"e.g. {listing.skipped[0][0]}: {listing.skipped[0][1]}" if listing.skipped else " (it is empty)"
        raise DataError(f"{uri}: no readable {'/'.join(s.lstrip('.') for s in suffixes)} files{seen}")
    return listing


def _partitions(rel_dir: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in rel_dir.split("/"):
        key, eq, value = part.partition("=")
        if eq and key:
            out.append((unquote(key), unquote(value)))
    return tuple(out)


def _walk_local(uri: str, root: str, listing: Listing) -> list:
    """os.walk, because pyarrow's local listing drops dangling links without a word."""
    base, real_root = uri.rstrip("/"), os.path.realpath(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            u = f"{base}/{rel_dir}/{name}" if rel_dir else f"{base}/{name}"
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not os.path.exists(target):
                    listing.skipped.append((u, f"dangling link to {os.readlink(full)}"))
                    continue
                if os.path.commonpath([real_root, target]) != real_root:
                    listing.skipped.append((u, "link leads outside the data folder; not followed"))
                    continue
                if os.path.isdir(target):
                    listing.skipped.append((u, "link to a folder; not followed"))
                    continue
            if not os.path.isfile(full):
                listing.skipped.append((u, "not a regular file"))
                continue
            st = os.stat(full)
            out.append((u, st.st_size, st.st_mtime, _partitions(rel_dir)))
    return out


@dataclass
class FileRead:
    """One file's rows (text columns plus ``ROW``, or what ``convert`` made of them); or why the
    file could not be read."""

    table: pa.Table | None
    rows_in: int  # data lines (CSV: every line after the header) or rows (Parquet)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (data line, reason)
    error: str | None = None  # the file is rejected whole: all rows_in lines
    unparsed: int = 0  # lines the CSV parser gave no row for (none expected; counted, not lost)
    header: list[str] | None = None  # the column names, when the file has them


Convert = Callable[[pa.Table], "pa.Table | None"]
BATCH_ROWS = 1 << 16  # Parquet rows per batch; CSV batches are about 1 MiB of text


def read_entry(entry: Entry, endpoint_url: str | None = None, convert: Convert | None = None,
               delimiter: str | None = None) -> FileRead:
    """Read one history file; never raises: whatever is wrong with the file becomes its
    ``error`` or ``bad_rows``, and every data line is counted in ``rows_in``.

    The file is parsed a batch at a time: each batch of text columns (with ``ROW`` and the Hive
    partition keys) goes through ``convert`` right away, so the whole file never exists as text
    (a batch ``convert`` maps to None is counted and dropped). ``delimiter``: of ``.csv`` files
    (default ``,``; ``.tsv`` files are tab-separated)."""
    fs, path = storage.filesystem(entry.uri, endpoint_url)

    def finish(batch: pa.Table) -> pa.Table | None:
        for key, value in entry.partitions:
            if key not in batch.column_names:
                batch = batch.append_column(key, pa.array([value] * batch.num_rows, pa.string()))
        return convert(batch) if convert else batch

    try:
        if entry.suffix in PARQUET:
            return _read_parquet(fs, path, finish)
        with fs.open_input_stream(path, compression=entry.compression) as f:
            return _read_csv(_Lines(f), delimiter_of(entry, delimiter), finish)
    except OSError as e:
        return FileRead(None, 0, error=f"cannot read: {storage.access_error(entry.uri, e, endpoint_url)}")
    except Exception as e:  # noqa: BLE001 - one bad file never stops the others
        return FileRead(None, 0, error=f"failed to read ({type(e).__name__}: {printable(e, 120)})")


def delimiter_of(entry: Entry, delimiter: str | None = None) -> str:
    """The field delimiter of a delimited file: ``delimiter`` (when given) for ``.csv``, else by suffix."""
    return delimiter if delimiter and entry.suffix == ".csv" else DELIMITERS.get(entry.suffix, ",")


# Local files are read one at a time: reading one costs little next to parsing it and converting
# its batches, which holds the GIL, so threads add CPU and no speed (bench/read_threads.py).
LOCAL_READ_THREADS = 1


def read_entries(entries: list[Entry], endpoint_url: str | None = None, convert=None,
                 threads: int = 0, delimiter: str | None = None) -> Iterator[FileRead]:
    """``read_entry`` over many files, in order: objects in a store a few at a time, as each
    request waits on the network; local files ``LOCAL_READ_THREADS`` at a time.
    ``convert(entry)`` gives the batch converter of a file."""
    threads = threads or (16 if entries and storage.is_s3(entries[0].uri) else LOCAL_READ_THREADS)
    one = lambda e: read_entry(e, endpoint_url, convert(e) if convert else None, delimiter)  # noqa: E731
    if threads == 1 or len(entries) < 2:
        yield from (one(e) for e in entries)
        return
    with ThreadPoolExecutor(threads) as pool:
        # a bounded window of reads in flight keeps memory flat however many files there are
        pending = [pool.submit(one, e) for e in entries[:threads * 2]]
        for k in range(len(entries)):
            got = pending[k].result()
            pending[k] = None
            if k + threads * 2 < len(entries):
                pending.append(pool.submit(one, entries[k + threads * 2]))
            yield got


def _concat(parts: list[pa.Table]) -> pa.Table | None:
    parts = [p for p in parts if p is not None]
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def _read_parquet(fs: pafs.FileSystem, path: str, finish) -> FileRead:
    rows = 0
    try:
        f = pq.ParquetFile(path, filesystem=fs)
        rows = f.metadata.num_rows
        parts, start = [], 1
        for batch in f.iter_batches(batch_size=BATCH_ROWS):
            parts.append(finish(pa.table([_as_text(c) for c in batch.columns] +
                                         [pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))],
                                         names=[*batch.schema.names, ROW])))
            start += batch.num_rows
    except OSError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        return FileRead(None, rows, error=f"not a readable Parquet file: {_excerpt(str(e), 200)}")
    except Exception as e:  # noqa: BLE001 - one bad file never stops the others
        return FileRead(None, rows, error=f"failed to read ({type(e).__name__}: {printable(e, 120)})")
    table = _concat(parts)
    return FileRead(table if table is not None else pa.table({ROW: pa.array([], pa.int64())}), start - 1,
                    header=f.schema_arrow.names)


def _as_text(col: pa.Array) -> pa.Array:
    """A Parquet column as text; a time-zone aware timestamp as its local wall time, so that its
    date is the calendar date it was written with (as for CSV), not the date in UTC."""
    if pa.types.is_timestamp(col.type) and col.type.tz is not None:
        col = pc.local_timestamp(col)
    return col.cast(pa.string()) if col.type != pa.string() else col


MAX_LINE = 128 << 10  # longest line read, in bytes (a history's lines are under 200); longer ones are cut out


class _Lines(io.RawIOBase):
    """The bytes of a text stream as pyarrow reads them, so that a file is neither held whole in
    memory nor read twice. On the way its bytes are checked as UTF-8 and its lines counted (a
    ``\\n``, ``\\r\\n`` or lone ``\\r`` ends one, as for pyarrow), and a line longer than ``limit``
    is cut out (it would stall the parser; ``long`` names it): a single space stands in for it, so
    that it stays a line of its own whatever ends the lines around it (a ``\\r`` before it and a
    ``\\n`` after it would otherwise be one ending). The first line can be read ahead (``header``)."""

    def __init__(self, stream, limit: int = MAX_LINE):
        self.stream, self.limit = stream, limit
        self.ready, self.at = b"", 0  # complete lines for the parser, and how far it has read them
        self.tail = b""               # the unfinished last line read (at most `limit` bytes)
        self.ends = 0                 # line endings read
        self.cr = False               # the last byte read was \r (a \n next is part of \r\n)
        self.open = False             # bytes after the last line ending
        self.cutting: list | None = None  # [line, bytes] while inside an overlong line
        self.long: list[tuple[int, int]] = []  # (line, bytes) of each line cut out; the header is line 0
        self.offset, self.head, self.eof = 0, b"", False
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def lines(self) -> int:
        """Lines read so far (an unfinished last line counts)."""
        return self.ends + self.open

    @staticmethod
    def _count(data: bytes) -> int:
        n = data.count(b"\n")
        return n + data.count(b"\r") - data.count(b"\r\n") if b"\r" in data else n

    def _read(self) -> bytes:
        data = self.stream.read(1 << 20)
        if data:
            self.head = self.head or data[:64]
            self.ends += self._count(data) - (self.cr and data[:1] == b"\n")
            self.cr, self.open = data[-1:] == b"\r", data[-1:] not in (b"\n", b"\r")
            self.offset += len(data)
        return data

    def drain(self) -> None:
        """Read the rest, counting lines only (the file is rejected; its lines still count)."""
        try:
            while self._read():
                pass
        except OSError:
            pass

    def _fill(self) -> None:
        start, cr_before = self.ends, self.cr
        data = self._read()
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            self.error = f"{e.reason} at byte {self.offset - len(data) + e.start}"
            raise OSError(f"not UTF-8 text ({self.error})") from None
        if not data:
            self.eof = True
            if self.cutting:
                self.long.append((self.cutting[0], self.cutting[1]))
            # an unfinished last line (or the stand-in of a cut one) gets its ending
            self._hand_on(self.tail + b"\n" if self.tail else b" \n" if self.cutting else b"")
            self.tail, self.cutting = b"", None
            return
        if self.cutting:  # inside an overlong line: drop bytes up to its ending, keep the ending
            end = _first_end(data, 0)
            if end < 0:
                self.cutting[1] += len(data)
                return
            self.long.append((self.cutting[0], self.cutting[1] + end))
            # what is left starts with the cut line's ending: the lines before it are its number
            start, cr_before, data, self.cutting = self.cutting[0], False, b" " + data[end:], None
        buf = self.tail + data
        last = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        done, self.tail = buf[:last + 1], buf[last + 1:]
        if len(done) > self.limit:
            done = self._cut(done, start, cr_before)
        if len(self.tail) > self.limit:
            self.cutting, self.tail = [self.ends, len(self.tail)], b""  # every ending read is before it
        self._hand_on(done)

    def _cut(self, buf: bytes, start: int, cr_before: bool) -> bytes:
        """``buf`` (whole lines) with each line longer than ``limit`` emptied, noted in ``long``.
        A few ``rfind`` calls per MiB: each finds the last line ending within ``limit`` bytes."""
        has_cr, pos, out = b"\r" in buf, 0, []
        while len(buf) - pos > self.limit + 1:
            stop = pos + self.limit + 1
            end = max(buf.rfind(b"\n", pos, stop), buf.rfind(b"\r", pos, stop) if has_cr else -1)
            if end >= 0:
                pos = end + 1
                continue
            end = _first_end(buf, stop)
            line = start + self._count(buf[:pos]) - (cr_before and buf[:1] == b"\n")
            self.long.append((line, end - pos))
            out.append(buf[:pos])
            buf, start, cr_before = b" " + buf[end:], line, False
            pos = 3 if buf[1:3] == b"\r\n" else 2
        out.append(buf)
        return b"".join(out)

    def _hand_on(self, data: bytes) -> None:
        if data:
            self.ready = self.ready[self.at:] + data if self.at < len(self.ready) else data
            self.at = 0

    def header(self) -> bytes | None:
        """The first line, read ahead (None when the stream is empty)."""
        while not self.eof and _first_end(self.ready, self.at) < 0:
            self._fill()
        if self.at >= len(self.ready):
            return None
        end = _first_end(self.ready, self.at)
        return self.ready[self.at:end]

    def readinto(self, buf) -> int:
        while self.at >= len(self.ready) and not self.eof:
            self._fill()
        n = min(len(buf), len(self.ready) - self.at)
        buf[:n] = self.ready[self.at:self.at + n]
        self.at += n
        return n


def _first_end(data: bytes, start: int) -> int:
    """Position of the first line ending at or after ``start``; -1 if none."""
    n, r = data.find(b"\n", start), data.find(b"\r", start)
    return n if r < 0 else r if n < 0 else min(n, r)


_MAGIC = {b"\x1f\x8b": "gzip-compressed data: name it .csv.gz", b"BZh": "bzip2-compressed data: name it .csv.bz2",
          b"\x28\xb5\x2f\xfd": "zstd-compressed data: name it .csv.zst", b"PAR1": "a Parquet file: name it .parquet",
          b"PK\x03\x04": "a ZIP archive (an Excel workbook?): export it as CSV",
          b"\xff\xfe": "UTF-16 text: save it as UTF-8", b"\xfe\xff": "UTF-16 text: save it as UTF-8"}


def _what_is(head: bytes, first: bytes | None) -> str | None:
    """Why a file that should be CSV is not, from its first bytes and first line; None if it may be."""
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"not CSV text but {what}"
    text = (first or b"").lstrip(b"\xef\xbb\xbf").strip()
    odd, even = head[1::2].count(0), head[::2].count(0)
    if (odd > len(head) // 4 and not even) or (even > len(head) // 4 and not odd):
        return "not CSV text but UTF-16 text (no byte-order mark): save it as UTF-8"
    if b"\x00" in head or sum(b < 32 and b not in b"\t\r\n" for b in head) > 2:
        return "binary data, not CSV text"
    shown = _excerpt(text.decode("utf-8", "replace"))
    if text[:1] == b"<":
        return f"an HTML or XML document, not CSV (an error page saved as data?): {shown}"
    if text[:1] in (b"{", b"["):
        return f"JSON, not CSV: {shown}"
    return None


class _NotCsv(Exception):
    """A file rejected whole, before parsing, with the reason."""


def _read_csv(stream: _Lines, delimiter: str, finish) -> FileRead:
    """Read a delimited file: every line after the header is a data line, kept (a row of the
    table) or in ``bad_rows`` with its reason. Whatever goes wrong with the file as a whole, it
    is an error with a reason and all its data lines, never an exception."""
    try:
        return _parse_csv(stream, delimiter, finish)
    except Exception as e:  # noqa: BLE001 - one bad file never stops the others
        if stream.error:
            why = _what_is(stream.head, None) or f"not UTF-8 text ({stream.error}); save the file as UTF-8"
        elif isinstance(e, _NotCsv):
            why = str(e)
        elif isinstance(e, (pa.ArrowInvalid, OSError, csv.Error)):
            why = f"not readable as delimited text: {_excerpt(str(e).splitlines()[0] if str(e) else '', 120)}"
        else:
            why = f"failed to read ({type(e).__name__}: {printable(e, 120)})"
        stream.drain()
        return FileRead(None, max(stream.lines() - 1, 0), error=why)


def _parse_csv(stream: _Lines, delimiter: str, finish) -> FileRead:
    first = stream.header()
    if first is None:
        raise _NotCsv("empty file (no header, no rows)")
    what = _what_is(stream.head, first)
    if what:
        raise _NotCsv(what)
    if stream.long and stream.long[0][0] == 0:
        raise _NotCsv(f"the first line is {stream.long[0][1]:,} bytes long: not a CSV header")
    header = first.lstrip(b"\xef\xbb\xbf").decode("utf-8")
    if not header.strip():
        raise _NotCsv("the first line is blank; the header (column names) must be the first line")
    # a stray quote in the header would run to its end: then its quotes are dropped, not obeyed
    names = _unique([n.replace('"', "") for n in header.split(delimiter)] if header.count('"') % 2
                    else next(csv.reader([header], delimiter=delimiter), []))
    invalid: list[tuple[int, str, int]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text, row.actual_columns))
        return "skip"

    reader = pacsv.open_csv(
        pa.PythonFile(stream, mode="r"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20, column_names=names, skip_rows=1),
        # No quoting: a stray quote cannot swallow the lines after it. A line is a row; quoted
        # fields are unquoted below, and a line whose quotes hold the delimiter is split by csv.
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, ignore_empty_lines=False,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=False))
    parts, bad, blank, records, next_line, used = [], [], [], 0, 1, 0
    pending = np.array([], dtype=np.int64)  # data lines of rows skipped as invalid, not yet passed

    def take_invalid() -> None:
        """Reasons for the rows pyarrow skipped since the last call; those whose quotes hold the
        delimiter are split by the csv module and kept."""
        nonlocal used, records
        new, used = invalid[used:], len(invalid)
        records += len(new)
        more = []
        for num, text, got in new:
            line = num - 1 if num is not None else 0
            if not text.strip():
                blank.append(np.array([line]))
                continue
            fields = next(csv.reader([text], delimiter=delimiter), []) if '"' in text else None
            if fields is not None and len(fields) == len(names):
                more.append(fields + [line])
            elif text.count('"') % 2:
                bad.append((line, f"unbalanced quote (\"): {_excerpt(text)}"))
            else:
                bad.append((line, f"{got} fields where the header has {len(names)}: {_excerpt(text)}"))
        if more:
            cols = list(zip(*more))
            parts.append(finish(pa.table([pa.array(c, pa.string()) for c in cols[:-1]] +
                                         [pa.array(cols[-1], pa.int64())], names=[*names, ROW])))

    for batch in reader:
        # Data line of each row: pyarrow numbers the rows it skips by physical line (header = 1);
        # the others take the free lines in order (one line is one row: there is no quoting).
        skipped = [num - 1 for num, _, _ in invalid[used:] if num is not None]
        pending = np.union1d(pending, np.array(skipped, dtype=np.int64))
        take_invalid()
        n = batch.num_rows
        span = np.arange(next_line, next_line + n + len(pending), dtype=np.int64)
        lines = span[~np.isin(span, pending)][:n]
        if n:
            next_line = int(lines[-1]) + 1
            pending = pending[pending >= next_line]
        records += n
        table = pa.Table.from_batches([batch]).append_column(ROW, pa.array(lines))
        empty = None
        for c in names:  # (one column: a row of spaces is a line of spaces, or a cut line's stand-in)
            e = pc.equal(table[c] if len(names) > 1 else pc.utf8_trim_whitespace(table[c]), "")
            empty = e if empty is None else pc.and_(empty, e)
        if empty is not None and pc.any(empty).as_py():
            blank.append(table.filter(empty)[ROW].to_numpy())
            table = table.filter(pc.invert(empty))
        if table.num_rows:
            parts.append(finish(_unquote(table, names)))
    take_invalid()
    long = dict(stream.long)
    for line in np.concatenate(blank) if blank else ():
        n = long.get(int(line))
        bad.append((int(line), f"line of {n:,} bytes, longer than the {MAX_LINE >> 10} KiB limit; not read" if n
                    else "blank line (no values)"))
    rows_in = max(stream.lines() - 1, records)
    table = _concat(parts)
    if table is None:
        table = pa.table({**{n: pa.array([], pa.string()) for n in names}, ROW: pa.array([], pa.int64())})
    return FileRead(table, rows_in, sorted(bad), unparsed=rows_in - records, header=names)


def _unique(names: list[str]) -> list[str]:
    """Header names made unique (a repeated name gets ``.1``, ``.2``: pyarrow would merge them)."""
    out: list[str] = []
    for n in names:
        k, i = n, 0
        while k in out:
            i += 1
            k = f"{n}.{i}"
        out.append(k)
    return out


def _unquote(table: pa.Table, names: list[str]) -> pa.Table:
    """Fields written in quotes (``"AAPL"``, ``"1.5"``) without them (``""`` inside is ``"``)."""
    for c in names:
        col = table[c]
        if not pc.any(pc.match_substring(col, '"')).as_py():
            continue
        t = pc.utf8_trim_whitespace(col)
        quoted = pc.and_(pc.and_(pc.starts_with(t, '"'), pc.ends_with(t, '"')), pc.greater(pc.utf8_length(t), 1))
        inner = pc.replace_substring(pc.utf8_slice_codeunits(t, 1, -1), '""', '"')
        table = table.set_column(table.column_names.index(c), c, pc.if_else(quoted, inner, col))
    return table


def printable(text: str, n: int = 60) -> str:
    """At most ``n`` characters of ``text``, each unprintable one as ``?``, ``...`` if cut."""
    text = str(text)
    return "".join(ch if ch.isprintable() else "?" for ch in text[:n]) + ("..." if len(text) > n else "")


def _excerpt(text: str, n: int = 60) -> str:
    """A short, printable excerpt of a file's content for a reject reason, in quotes."""
    return repr(printable(text, n))


def read_text_files(uri: str, endpoint_url: str | None = None) -> list[tuple[str, bytes]]:
    """``(uri, bytes)`` of a text corpus: one file, or every ``.txt`` file under a folder or
    prefix, in name order."""
    fs, path = storage.filesystem(uri, endpoint_url)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise UserError(storage.access_error(uri, e, endpoint_url)) from None
    if info.type == pafs.FileType.File:
        files = [str(uri)]
    elif info.type == pafs.FileType.Directory:
        files = [e.uri for e in list_source(uri, (".txt",), endpoint_url).entries]
    else:
        raise DataError(f"{uri}: no such file, folder or prefix (set data.path to a UTF-8 text file, a "
                        "folder or s3:// prefix of .txt files, or null for the bundled tinyshakespeare)")
    out = []
    for f in files:
        try:
            out.append((f, storage.read_bytes(f, endpoint_url)))
        except OSError as e:
            raise UserError(storage.access_error(f, e, endpoint_url)) from None
    return out
