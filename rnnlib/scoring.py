"""Scoring histories with a forecast bundle: forecasts after the last day, or backtests.

Windows from every series in a batch go through the model together in large batches; the
outputs are mapped back to each series' prices with its own transform. Output columns:

forecast mode (one row per ticker and step)
    ticker, as_of (last input date), step (1..horizon), date (the step-th business day after
    as_of; exchange holidays are not modelled), last_close, forecast (the point forecast: the
    median, blended with persistence by the bundle's point_weight, or moved to a random walk with
    drift when its point_centre is drift), lo_80 / hi_80 (the band
    from the outer quantiles; the number is its width in percent), one column per quantile
    the bundle predicts, named by ``quantile_column`` (q10, q50, q90; q97.5), scaler ("bundle":
    fitted at training time; "history": fitted here on the series' own past)
backtest mode (one row per ticker, origin and step)
    ticker, origin (last input date), step, date, actual, forecast, lo_80, hi_80, the quantile
    columns, persistence (the last observed price: the naive forecast), scaler
per-ticker backtest metrics
    ticker, windows, mae, rmse, smape, mase, directional_accuracy, coverage, interval_width,
    pinball (mean over every step and quantile, each window's loss divided by its price at the
    origin: scale free, so tickers compare), and the same with a persistence_ prefix
    (persistence_pinball: every quantile at the last price), and rmae = mae / persistence_mae.
    coverage and interval_width need a band (3 quantiles or more), pinball a quantile model.

Quantiles are in order on every row, by construction (``features.ordered_forecast``, shared
with training's metrics): q05 <= q10 <= ... and lo <= forecast <= hi, forecast == q50.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .bundle import Bundle
from .features import (
    Windows,
    fit_transform,
    naive_scale,
    ordered_forecast,
    point_anchor,
    point_index,
    series_windows,
    source_columns,
    to_price,
)
from .loop import predict
from .metrics import compare_to_persistence, persistence, pinball
from .sources import Listing
from .stocks import REJECT_COLUMNS, REJECT_SERIES, Histories, load_histories

MODES = ("forecast", "backtest")


@dataclass
class ScoreResult:
    forecasts: pd.DataFrame
    metrics: pd.DataFrame | None
    rejects: pd.DataFrame
    hist: Histories
    rows_after_as_of: int = 0
    windows: int = 0  # windows the model forecast (one per series in forecast mode, one per origin in backtest)

    @property
    def series_scored(self) -> int:
        return int(self.forecasts["ticker"].nunique()) if len(self.forecasts) else 0


def quantile_column(q: float) -> str:
    """The output column of quantile ``q``: ``q`` and the percent, two digits at least
    (0.05 -> q05, 0.5 -> q50, 0.975 -> q97.5)."""
    whole, _, frac = f"{q * 100:.6f}".rstrip("0").partition(".")
    return f"q{whole:0>2}" + (f".{frac}" if frac else "")


def band_level(quantiles: list[float]) -> int | None:
    """The coverage in percent of the band between the outer quantiles (80 for 0.1 to 0.9); None
    under three quantiles (no band beside the median)."""
    return round((quantiles[-1] - quantiles[0]) * 100) if len(quantiles) >= 3 else None


def band_names(quantiles: list[float]) -> tuple[str, str] | None:
    """The published columns of the band, e.g. (lo_80, hi_80)."""
    level = band_level(quantiles)
    return None if level is None else (f"lo_{level}", f"hi_{level}")


def min_rows_for(bundle: Bundle, mode: str) -> int:
    d = bundle.data
    return d["window"] + 1 + (d["horizon"] if mode == "backtest" else 0)


def validation_args(bundle: Bundle, mode: str) -> dict:
    """How histories are validated for scoring with ``bundle``: ``load_histories`` /
    ``validate_rows`` keyword arguments."""
    d = bundle.data
    return dict(needed=source_columns(tuple(d["columns"])), min_rows=min_rows_for(bundle, mode),
                max_jump=d.get("max_jump", 1.75))


def score_files(bundle: Bundle, files: list | Listing, *, mode: str = "forecast", as_of: str | None = None,
                backtest_days: int = 250, step: int | None = None, batch_size: int = 512,
                columns: dict[str, str] | None = None, endpoint_url: str | None = None,
                delimiter: str | None = None, date_format: str | None = None) -> ScoreResult:
    """Load and validate ``files`` (paths or URIs, or a ``sources.Listing``), then score every
    usable series in one batched pass."""
    hist = load_histories(files if isinstance(files, Listing) else list(files), columns=columns,
                          endpoint_url=endpoint_url, delimiter=delimiter, date_format=date_format,
                          **validation_args(bundle, mode))
    return score_histories(bundle, hist, mode=mode, as_of=as_of, backtest_days=backtest_days, step=step,
                           batch_size=batch_size)


def score_histories(bundle: Bundle, hist: Histories, *, mode: str = "forecast", as_of: str | None = None,
                    backtest_days: int = 250, step: int | None = None, batch_size: int = 512) -> ScoreResult:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    d = bundle.data
    window, horizon, cols = d["window"], d["horizon"], tuple(d["columns"])
    known = bundle.transforms
    extra_rejects, parts, meta, after = [], [], [], 0
    for sid, (ticker, df) in enumerate(sorted(hist.series.items())):
        if as_of is not None:
            keep = df["date"] <= pd.Timestamp(as_of)
            after += int((~keep).sum())
            df = df[keep].reset_index(drop=True)
        n = len(df)
        if mode == "forecast":
            ends, fit_end = np.array([n - 1]), n
        else:
            first = max(n - 1 - backtest_days, window)
            ends = np.arange(first, n - horizon, step or horizon)
            fit_end = first + 1
        tf = known.get(ticker)
        scaler = "bundle"
        if tf is None or tuple(tf.columns) != cols:
            tf, scaler = fit_transform(df, cols, d["transform"], max(fit_end, 2)), "history"
        w = series_windows(df, tf, window, horizon, ends, sid=sid, with_target=mode == "backtest")
        if len(w) == 0:
            why = (f"too short to score after as_of {as_of}: {n} rows, need {window + 1}" if mode == "forecast"
                   else f"no backtest origin: {n} rows, need more than window + horizon ({window}+{horizon})")
            extra_rejects.append(dict(file=None, ticker=ticker, row=None, date=None, rows=0,
                                      action=REJECT_SERIES, reason=why))
            continue
        parts.append(w)
        meta.append((ticker, df, tf, scaler, fit_end))
    rejects = pd.concat([hist.rejects, pd.DataFrame(extra_rejects, columns=REJECT_COLUMNS)], ignore_index=True) \
        if extra_rejects else hist.rejects
    if not parts:
        return ScoreResult(_empty(mode, d["quantiles"]), None, rejects, hist, after)
    pooled = Windows.concat(parts)
    out = predict(bundle.model, pooled.x, batch_size=batch_size)  # (N, H, Q)
    frames, metric_rows = [], []
    for w, (ticker, df, tf, scaler, fit_end) in zip(parts, meta):
        m = pooled.sid == w.sid[0]
        anchor = point_anchor(d.get("point_centre", "persistence"), df[d["target"]].to_numpy(float), w.end, horizon)
        prices = ordered_forecast(to_price(out[m].astype(np.float64), w.last, tf), anchor,
                                  d.get("point_weight", 1.0), point_index(d["quantiles"]))
        frame, metrics = _rows(mode, ticker, df, w, prices, d, scaler, fit_end)
        frames.append(frame)
        if metrics is not None:
            metric_rows.append(metrics)
    forecasts = pd.concat(frames, ignore_index=True)
    return ScoreResult(forecasts, pd.DataFrame(metric_rows) if mode == "backtest" else None, rejects, hist, after,
                       len(pooled))


def _rows(mode, ticker, df, w: Windows, prices: np.ndarray, d: dict, scaler: str, fit_end: int):
    horizon, q = d["horizon"], d["quantiles"]
    mid = point_index(q)
    n_w = len(w)
    steps = np.tile(np.arange(1, horizon + 1), n_w)
    origin = df["date"].to_numpy()[w.end]
    cols = {"ticker": ticker}
    if mode == "forecast":
        dates = pd.bdate_range(pd.Timestamp(origin[0]) + pd.offsets.BDay(1), periods=horizon)
        cols.update(as_of=np.repeat(origin, horizon), step=steps, date=dates.to_numpy(),
                    last_close=np.repeat(w.last, horizon))
    else:
        target_rows = w.end[:, None] + np.arange(1, horizon + 1)
        cols.update(origin=np.repeat(origin, horizon), step=steps,
                    date=df["date"].to_numpy()[target_rows].ravel(),
                    actual=df[d["target"]].to_numpy()[target_rows].ravel())
    cols["forecast"] = prices[..., mid].ravel()
    band = band_names(q)
    if band:
        cols[band[0]], cols[band[1]] = prices[..., 0].ravel(), prices[..., -1].ravel()
    for j, level in enumerate(q):
        cols[quantile_column(level)] = prices[..., j].ravel()
    if mode == "backtest":
        cols["persistence"] = np.repeat(w.last, horizon)
    cols["scaler"] = scaler
    frame = pd.DataFrame(cols)
    if mode == "forecast":
        return frame, None
    actual = frame["actual"].to_numpy().reshape(n_w, horizon)
    lo = prices[..., 0] if band else None
    hi = prices[..., -1] if band else None
    scale = np.full(n_w, naive_scale(df, d["target"], fit_end))
    c = compare_to_persistence(actual, prices[..., mid], w.last, scale, lo, hi)
    model, naive = c["model"], c["persistence"]
    if q:  # per unit of the price at the origin
        model["pinball"] = pinball(actual, prices, q, per=w.last)
        naive["pinball"] = pinball(actual, persistence(w.last, horizon)[..., None], q, per=w.last)
    row = {"ticker": ticker, "windows": n_w, **model,
           **{f"persistence_{k}": v for k, v in naive.items() if k != "n"}, "rmae": c["rmae"]}
    row.pop("n", None)
    return frame, row


def _empty(mode: str, quantiles: list[float]) -> pd.DataFrame:
    cols = ["ticker", "as_of" if mode == "forecast" else "origin", "step", "date"]
    cols += ["last_close"] if mode == "forecast" else ["actual"]
    cols += ["forecast", *(band_names(quantiles) or ()), *map(quantile_column, quantiles)]
    cols += ["persistence"] if mode == "backtest" else []
    return pd.DataFrame({c: [] for c in cols + ["scaler"]})
