"""Real histories re-laid in the layouts data feeds produce, for tests and benchmarks.

``write_layout(series, root, layout)`` writes the same rows as:

- ``per_ticker``: ``<TICKER>_data.csv`` with a Name column (the bundled layout);
- ``long_csv_gz``: one gzipped long table ``prices.csv.gz`` with a ticker column;
- ``long_tsv``: one tab-separated long table ``prices.tsv``;
- ``hive_daily``: one Parquet file per trading day, ``date=YYYY-MM-DD/part-0.parquet``, the date
  only in the folder name (a Hive partition key) and a ``symbol`` column;
- ``monthly_csv``: one CSV per month, ``YYYY/YYYY-MM.csv``, rows of every ticker.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LAYOUTS = ("per_ticker", "long_csv_gz", "long_tsv", "hive_daily", "monthly_csv")


def read_per_ticker(files) -> dict[str, pd.DataFrame]:
    """``{ticker: its rows as text}`` of per-ticker files (``<TICKER>_data.csv``, the bundled
    layout), the Name column dropped: what ``write_layout`` takes."""
    return {f.name.removesuffix("_data.csv"): pd.read_csv(f, dtype=str).drop(columns="Name") for f in files}


def long_frame(series: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [df.assign(ticker=t) for t, df in sorted(series.items())]
    out = pd.concat(frames, ignore_index=True)
    out["date"] = pd.to_datetime(out["date"]).dt.strftime("%Y-%m-%d")
    return out


def write_layout(series: dict[str, pd.DataFrame], root: Path, layout: str) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    df = long_frame(series)
    if layout == "per_ticker":
        for t, part in df.groupby("ticker"):
            part.rename(columns={"ticker": "Name"}).to_csv(root / f"{t}_data.csv", index=False)
    elif layout == "long_csv_gz":
        df.to_csv(root / "prices.csv.gz", index=False, compression="gzip")
    elif layout == "long_tsv":
        df.to_csv(root / "prices.tsv", index=False, sep="\t")
    elif layout == "hive_daily":
        for day, part in df.groupby("date"):
            d = root / f"date={day}"
            d.mkdir()
            part.drop(columns="date").rename(columns={"ticker": "symbol"}).to_parquet(d / "part-0.parquet",
                                                                                     index=False)
    elif layout == "monthly_csv":
        for month, part in df.groupby(df["date"].str[:7]):
            d = root / month[:4]
            d.mkdir(exist_ok=True)
            part.to_csv(d / f"{month}.csv", index=False)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    return root
