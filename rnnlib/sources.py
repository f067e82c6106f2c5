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
    rows_in: int
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (data line, reason)
    error: str | None = None


Convert = Callable[[pa.Table], "pa.Table | None"]
BATCH_ROWS = 1 << 16  # Parquet rows per batch; CSV batches are about 1 MiB of text


def read_entry(entry: Entry, endpoint_url: str | None = None, convert: Convert | None = None) -> FileRead:
    """Read one history file; never raises for what is inside the file.

    The file is parsed a batch at a time: each batch of text columns (with ``ROW`` and the Hive
    partition keys) goes through ``convert`` right away, so the whole file never exists as text
    (a batch ``convert`` maps to None is counted and dropped)."""
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
            return _read_csv(_Utf8Stream(f), DELIMITERS[entry.suffix], finish)
    except OSError as e:
        return FileRead(None, 0, error=f"cannot read: {storage.access_error(entry.uri, e, endpoint_url)}")


def read_entries(entries: list[Entry], endpoint_url: str | None = None, convert=None,
                 threads: int = 0) -> Iterator[FileRead]:
    """``read_entry`` over many files, in order, a few at a time (object stores answer each
    request slowly, so reads overlap; pyarrow releases the GIL while it reads and parses).
    ``convert(entry)`` gives the batch converter of a file."""
    threads = threads or (16 if entries and storage.is_s3(entries[0].uri) else 4)
    one = lambda e: read_entry(e, endpoint_url, convert(e) if convert else None)  # noqa: E731
    if len(entries) < 2:
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
    try:
        f = pq.ParquetFile(path, filesystem=fs)
        parts, start = [], 1
        for batch in f.iter_batches(batch_size=BATCH_ROWS):
            cols = [c.cast(pa.string()) if c.type != pa.string() else c for c in batch.columns]
            rows = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
            parts.append(finish(pa.table(cols + [rows], names=[*batch.schema.names, ROW])))
            start += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        return FileRead(None, 0, error=f"not a readable Parquet file: {_excerpt(str(e), 200)}")
    table = _concat(parts)
    return FileRead(table if table is not None else pa.table({ROW: pa.array([], pa.int64())}), start - 1)


class _Utf8Stream(io.RawIOBase):
    """The bytes of a stream as pyarrow reads them, checked as UTF-8 on the way (so a file is
    neither held whole in memory nor read twice); its first line can be read ahead."""

    def __init__(self, stream):
        self.stream, self.ahead, self.offset = stream, b"", 0
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.error: str | None = None

    def header(self) -> bytes:
        while b"\n" not in self.ahead:
            more = self.stream.read(1 << 16)
            if not more:
                break
            self.ahead += more
        return self.ahead.split(b"\n", 1)[0]

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.ahead[:len(buf)] if self.ahead else self.stream.read(len(buf))
        self.ahead = self.ahead[len(data):]
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            self.error = f"{e.reason} at byte {self.offset + e.start}"
            raise OSError(f"not UTF-8 text ({self.error})") from None
        self.offset += len(data)
        buf[:len(data)] = data
        return len(data)


def _read_csv(stream: _Utf8Stream, delimiter: str, finish) -> FileRead:
    """Parse CSV with pyarrow, a block at a time; rows with the wrong field count become
    ``bad_rows``; blank lines are not rows."""
    header = stream.header()
    if not header.strip() and not stream.ahead.strip():
        return FileRead(None, 0, error="empty file (no header, no rows)")
    names = next(csv.reader([header.lstrip(b"\xef\xbb\xbf").decode("utf-8", "replace")], delimiter=delimiter), [])
    invalid: list[tuple[int, str, int]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text, row.actual_columns))
        return "skip"

    parts, rows_in, next_line, used = [], 0, 1, 0
    try:
        reader = pacsv.open_csv(
            pa.PythonFile(stream, mode="r"),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=False,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            # Data line of each row: pyarrow numbers the skipped rows by physical line (header = 1);
            # the others take the lines in between, in order (a quoted field spanning lines shifts them).
            skip = {num - 1 for num, _, _ in invalid[used:] if num is not None}
            used = len(invalid)
            span = np.arange(next_line, next_line + batch.num_rows + len(skip), dtype=np.int64)
            lines = span[~np.isin(span, list(skip))][: batch.num_rows]
            next_line = int(lines[-1]) + 1 if len(lines) else next_line
            table = pa.Table.from_batches([batch]).append_column(ROW, pa.array(lines))
            blank = None
            for c in table.column_names[:-1]:
                empty = pc.equal(pc.utf8_length(table[c]), 0)
                blank = empty if blank is None else pc.and_(blank, empty)
            if blank is not None:
                table = table.filter(pc.invert(blank))
            rows_in += table.num_rows
            parts.append(finish(table))
    except (pa.ArrowInvalid, OSError) as e:
        if stream.error:
            return FileRead(None, 0, error=f"not UTF-8 text ({stream.error}); save the file as UTF-8")
        if isinstance(e, OSError) and not isinstance(e, pa.ArrowInvalid):
            raise
        return FileRead(None, 0, error=f"not readable as delimited text: {_excerpt(str(e).splitlines()[0], 200)}")
    bad = [(num - 1 if num is not None else 0,
            f"{got} fields where the header has {len(names)}: {_excerpt(text)}") for num, text, got in invalid]
    table = _concat(parts)
    if table is None:
        table = pa.table({**{n: pa.array([], pa.string()) for n in names}, ROW: pa.array([], pa.int64())})
    return FileRead(table, rows_in + len(bad), bad)


def _excerpt(text: str, n: int = 60) -> str:
    """A short, printable excerpt of a file's content for a reject reason."""
    s = "".join(ch if ch.isprintable() else "?" for ch in str(text)[:n])
    return repr(s + ("..." if len(str(text)) > n else ""))


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
