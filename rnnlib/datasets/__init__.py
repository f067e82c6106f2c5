"""Small real datasets shipped with the package, so the demo and tests need nothing else.
See PROVENANCE.md in this folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_stocks_dir() -> Path:
    """26 daily OHLCV histories from the S&P 500 set, 2013-02-08 to 2018-02-07."""
    return Path(str(resources.files(__name__) / "stocks"))


def tinyshakespeare_path() -> Path:
    """tinyshakespeare.txt: 1,115,394 characters, 65 distinct."""
    return Path(str(resources.files(__name__) / "tinyshakespeare.txt"))
