"""Peak memory and time of loading one large long table: ``rnnlib.stocks.load_histories``.

The 505 S&P 500 histories of ../shared/data/stocks/sp500_5yr (the bundled sample repeated if
absent) are written as one long CSV with a ticker column, repeated under new tickers until it
holds about 2,600 tickers and 3.3 M rows (about 200 MB): the shape of a vendor's daily dump.
Each case loads it in a fresh process and reports the peak RSS (``VmHWM``) as a multiple of the
file size, next to the same process's RSS after imports (Python, numpy, pandas, pyarrow).
The same rows as gzipped CSV and as Parquet are measured in the same run, and the CSV once more
as one of four Ray Train workers reads it: only a quarter of the tickers kept (``tickers=``),
the others' rows dropped batch by batch as they are read.

    python bench/load_memory.py [--tickers 2600]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from common import machine, write  # noqa: E402

from rnnlib.datasets import sample_stocks_dir  # noqa: E402
from rnnlib.tables import table  # noqa: E402

SP500 = ROOT.parent / "shared" / "data" / "stocks" / "sp500_5yr"

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child would report its parent's peak.
CHILD = """
import json, re, sys, time
import numpy, pandas, pyarrow, pyarrow.csv, pyarrow.parquet
from rnnlib.stocks import load_histories
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
base = hwm()
start = time.perf_counter()
tickers = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
h = load_histories(sys.argv[1], min_rows=100, needed=("close", "volume"), tickers=tickers)
secs = time.perf_counter() - start
peak = hwm()
print(json.dumps({"base": base, "peak": peak, "seconds": secs, "rows_in": h.rows_in, "kept": h.rows_kept,
                  "series": len(h.series)}))
"""


def long_table(src: Path, tickers: int) -> pd.DataFrame:
    """The histories under ``src`` as one long table, repeated under new tickers (AAPL, AAPL.1,
    ...) until it holds ``tickers`` tickers."""
    frames = [pd.read_csv(f, dtype=str) for f in sorted(src.glob("*.csv"))]
    out = [f.assign(Name=f["Name"].iloc[0] + (f".{k}" if k else ""))
           for k in range(math.ceil(tickers / len(frames))) for f in frames[: tickers - k * len(frames)]]
    return pd.concat(out, ignore_index=True).rename(columns={"Name": "ticker"})


def measure(path: Path, tickers: list[str] | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), *([json.dumps(tickers)] if tickers else [])],
                       cwd=ROOT, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"loading {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickers", type=int, default=2600, help="tickers in the long table (default 2600)")
    args = ap.parse_args()
    src = SP500 if SP500.exists() else sample_stocks_dir()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        df = long_table(src, args.tickers)
        paths = {"long CSV": Path(tmp) / "prices.csv", "long CSV, gzip": Path(tmp) / "prices.csv.gz",
                 "long Parquet": Path(tmp) / "prices.parquet"}
        df.to_csv(paths["long CSV"], index=False)
        df.to_csv(paths["long CSV, gzip"], index=False, compression="gzip")
        df.to_parquet(paths["long Parquet"], index=False)
        n_rows, n_tickers = len(df), df["ticker"].nunique()
        quarter = sorted(df["ticker"].unique())[::4]
        del df
        csv_size = paths["long CSV"].stat().st_size
        results = {}
        for label, p in paths.items():
            r = measure(p)
            r["file_mb"] = p.stat().st_size / 2**20
            results[label] = r
            assert r["rows_in"] == n_rows, (label, r)
        label = "long CSV, 1 of 4 workers' tickers"
        results[label] = {**measure(paths["long CSV"], quarter), "file_mb": results["long CSV"]["file_mb"]}
        assert results[label]["series"] <= len(quarter), results[label]
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}; {n_rows:,} rows, {n_tickers:,} tickers from {src}; "
          f"the CSV is {csv_size / 2**20:.0f} MB")
    rows = [(label, f"{r['file_mb']:.0f}", f"{r['seconds']:.1f}", f"{r['base'] / 2**20:.0f}",
             f"{r['peak'] / 2**20:.0f}", f"{r['peak'] / csv_size:.2f}x", f"{(r['peak'] - r['base']) / csv_size:.2f}x",
             f"{r['series']:,}")
            for label, r in results.items()]
    print(table(rows, ["file", "MB", "load s", "RSS after imports MB", "peak RSS MB", "peak / CSV size",
                       "(peak - imports) / CSV size", "series kept"]))
    out = write("load_memory", {"source": str(src), "rows": n_rows, "tickers": n_tickers, "csv_bytes": csv_size,
                                "results": results})
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
