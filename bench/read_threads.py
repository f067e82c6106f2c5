"""Threads for reading many local files: ``rnnlib.stocks.load_histories`` with 1, 2 and 4 at a time.

``rnnlib.sources.read_entries`` reads local files ``LOCAL_READ_THREADS`` at a time (objects in a
store 16 at a time: there each request waits on the network). This measures the choice on the 505
S&P 500 histories of ../shared/data/stocks/sp500_5yr (the bundled sample if absent) as they are,
one CSV per ticker, and the same rows as one Parquet file per trading day (the long layout): wall
seconds and this process's CPU seconds (all its threads) of a whole ``load_histories``, each
thread count once per round, rounds alternating, after one load at each count (a warm page cache).

    python bench/read_threads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, write  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from layouts import read_per_ticker, write_layout  # noqa: E402

from rnnlib import sources  # noqa: E402
from rnnlib.datasets import sample_stocks_dir  # noqa: E402
from rnnlib.stocks import load_histories  # noqa: E402
from rnnlib.tables import table  # noqa: E402

SP500 = ROOT.parent / "shared" / "data" / "stocks" / "sp500_5yr"
THREADS = (1, 2, 4)  # 4: the default before 2026-11-30


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load(src: Path, threads: int) -> tuple[float, float, int]:
    """(wall s, CPU s, rows kept) of one ``load_histories`` with ``threads`` files at a time."""
    sources.LOCAL_READ_THREADS = threads
    wall, cpu = time.perf_counter(), cpu_seconds()
    hist = load_histories(src, min_rows=1)
    return time.perf_counter() - wall, cpu_seconds() - cpu, hist.rows_kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    src = SP500 if SP500.exists() else sample_stocks_dir()
    raw = read_per_ticker(sorted(src.glob("*.csv")))
    work = Path(tempfile.mkdtemp(prefix="bench-read-threads-"))
    daily = write_layout(raw, work / "daily", "hive_daily")
    layouts = {f"{len(raw)} per-ticker CSVs": src, f"{len(list(daily.glob('date=*')))} daily Parquet files": daily}
    default = sources.LOCAL_READ_THREADS
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        for label, path in layouts.items():
            kept = {load(path, t)[2] for t in THREADS}  # warms the page cache; every count reads the same rows
            assert len(kept) == 1, f"{label}: rows kept differ by thread count: {kept}"
        for _ in range(args.rounds):
            for label, path in layouts.items():
                for t in THREADS:
                    runs.setdefault((label, t), []).append(load(path, t)[:2])
    finally:
        sources.LOCAL_READ_THREADS = default
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    rows = []
    for (label, t), (wall, cpu) in med.items():
        base_wall, base_cpu = med[(label, 4)]
        rows.append((label, t, f"{wall:.2f}", f"{cpu:.2f}", f"{wall / base_wall:.2f}", f"{cpu / base_cpu:.2f}"))
    m = machine()
    print(f"machine: {m['cpus']} cores; median of {args.rounds} rounds; the default is {default} thread(s)\n")
    print(table(rows, ["layout", "threads", "wall s", "CPU s", "wall / 4 threads'", "CPU / 4 threads'"]))
    out = write("read_threads", {"rounds": args.rounds, "default": default,
                                 "runs": [{"layout": k[0], "threads": k[1], "wall_cpu": v} for k, v in runs.items()]})
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
