"""From clean price series to model-ready windows, leak-free.

Per series: a chronological split (train / val / test by fractions or cutoff dates), a
transform whose parameters are fitted on the train rows only, and windows built with
``sliding_window_view`` (no Python loop per window).

Transforms (``data.transform``), with ``p`` the target price and ``t`` the window's last day:

- ``log_return`` (default): inputs are daily log returns of each price column (log-volume
  differences for volume), divided by their train-period std; the target for step k is
  ``log(p[t+k] / p[t])`` / std. The model predicts moves, not levels.
- ``window``: each window is normalised by its own last value: inputs ``x / x[t] - 1``,
  target ``p[t+k] / p[t] - 1``. Nothing is fitted.
- ``minmax`` / ``standard``: the tutorial's approach: every column scaled by train-period
  min/max (or mean/std, via scikit-learn), target ``p[t+k]`` scaled likewise. A model on
  these levels mostly learns to copy the last value; kept for comparison.

Whatever the transform, ``to_price`` maps model outputs back to prices, and
``Windows.last`` holds ``p[t]`` so the persistence baseline is always at hand. Then
``ordered_forecast``, the one step scoring and training metrics share, puts the quantiles in
order (they never cross) and blends the median with persistence, or moves it to a random walk
with drift (``data.point_shrink``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

TRANSFORMS = ("log_return", "window", "minmax", "standard")
# A series' transform and MASE scale are fitted on its train rows, or on its first MIN_FIT_ROWS
# rows (never past validation) when it has fewer: a series that began trading late in the train
# period has one or no train return, and its unfitted scale (1.0, where daily returns are about
# 0.02) made every band it got absurd (bench/forecast_quality.py on the S&P year: 8 such series,
# bands averaging 358% of the price; the model's pinball skill against a random walk went from
# -21.6% to -5.8% with this rule). A series that began in the test period has no such rows: it is
# fitted on the rows up to its first window's last day, the past of every forecast it makes (4 S&P
# series listed in the test year kept the unfitted scale before, with bands of 358% of the price,
# and turned the model's skill against the random walk from +0.3% to -5.8%).
MIN_FIT_ROWS = 60
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SeriesSplit:
    """Row boundaries of one series: train = [0, val), val = [val, test), test = [test, n)."""

    n: int
    val: int
    test: int


def split_series(dates: pd.Series, val_frac: float, test_frac: float,
                 val_start: str | None = None, test_start: str | None = None) -> SeriesSplit:
    """Chronological split points: cutoff dates when given, else fractions of the rows."""
    n = len(dates)
    d = pd.to_datetime(dates).to_numpy()
    test = int(np.searchsorted(d, np.datetime64(test_start))) if test_start else n - int(round(n * test_frac))
    val = int(np.searchsorted(d, np.datetime64(val_start))) if val_start else test - int(round(n * val_frac))
    return SeriesSplit(n, max(0, min(val, test)), test)


def feature_columns(target: str, features: tuple[str, ...]) -> tuple[str, ...]:
    """Input columns, target first (the transforms rely on column 0 being the target)."""
    return (target,) + tuple(c for c in features if c != target)


# Inputs made from two history columns, each a log ratio that is already stationary (so never
# differenced): the day's range log(high / low), the classic range-based volatility measure
# (Parkinson 1980, "The extreme value method for estimating the variance of the rate of return",
# J. Business 53(1)), and the overnight gap log(open / the day before's close).
# And the target's volatility over the trailing year: log of the root mean square of its daily
# log returns over the last VOL_DAYS days (fewer where the series has fewer), which is the level
# of spread the random-walk baseline carries (bench/baselines.py), for a model whose own window is
# a month. Made from the target (column 0), so it needs no other column.
DERIVED = {"range": ("high", "low"), "gap": ("open", "close"), "volatility": ()}
VOL_DAYS = 252


def source_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The history columns that model inputs are made from (what loading must read), in order;
    ``columns[0]`` is the target."""
    out: list[str] = []
    for c in columns:
        out += [s for s in DERIVED.get(c, (c,)) if s not in out]
    return tuple(out)


def trailing_volatility(price: np.ndarray, days: int = VOL_DAYS) -> np.ndarray:
    """(T,) log of the RMS daily log return over the ``days`` returns up to each row (the ones
    there are near the start; row 0, with none, gets row 1's value)."""
    r2 = np.r_[0.0, np.diff(np.log(price)) ** 2]
    c = np.cumsum(r2)
    rows = np.arange(len(price))
    n = np.minimum(rows, days)
    ms = (c - np.where(rows >= days, c[np.maximum(rows - days, 0)], 0.0)) / np.maximum(n, 1)
    if len(ms) > 1:
        ms[0] = ms[1]
    return 0.5 * np.log(np.maximum(ms, 1e-12))


@dataclass
class SeriesTransform:
    """Per-series parameters, fitted on train rows only; JSON-friendly via ``to_dict``."""

    kind: str
    columns: tuple[str, ...]
    loc: np.ndarray  # (F,) centre (mean or min) per column; zeros where unused
    scale: np.ndarray  # (F,) spread (std or max - min) per column; ones where unused

    def to_dict(self) -> dict:
        return {"kind": self.kind, "columns": list(self.columns),
                "loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> SeriesTransform:
        return cls(d["kind"], tuple(d["columns"]), np.asarray(d["loc"], float), np.asarray(d["scale"], float))


def _raw_matrix(df: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """(T, F) float64; volume goes to log1p so it is on a scale comparable to prices; ``DERIVED``
    inputs are their log ratios (the first day's gap is 0)."""
    def column(c: str) -> np.ndarray:
        if c == "volume":
            return np.log1p(df[c].to_numpy(float))
        if c == "range":
            return np.log(df["high"].to_numpy(float) / df["low"].to_numpy(float))
        if c == "gap":
            close = df["close"].to_numpy(float)
            return np.r_[0.0, np.log(df["open"].to_numpy(float)[1:] / close[:-1])]
        if c == "volatility":
            return trailing_volatility(df[columns[0]].to_numpy(float))
        return df[c].to_numpy(float)
    return np.stack([column(c) for c in columns], axis=1)


def _returns(raw: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """(T, F) one-day changes: log returns for prices, differences of log1p(volume), row 0 is 0;
    ``DERIVED`` inputs as they are (already changes)."""
    out = np.zeros_like(raw)
    for j, c in enumerate(columns):
        if c in DERIVED:
            out[:, j] = raw[:, j]
        else:
            out[1:, j] = np.diff(raw[:, j] if c == "volume" else np.log(raw[:, j]))
    return out


def fit_transform(df: pd.DataFrame, columns: tuple[str, ...], kind: str, train_end: int) -> SeriesTransform:
    """Fit the transform's parameters on rows [0, train_end) of one series."""
    if kind not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {kind!r}")
    raw = _raw_matrix(df, columns)[:train_end]
    f = len(columns)
    if kind in ("minmax", "standard"):
        # Imported here: scikit-learn costs 0.8 s at import, paid by every Ray worker that unpickles
        # a scoring or training function, and only these two (non-default) transforms use it.
        from sklearn.preprocessing import MinMaxScaler, StandardScaler
    if kind == "minmax":
        s = MinMaxScaler().fit(raw)
        loc, scale = s.data_min_, s.data_range_
    elif kind == "standard":
        s = StandardScaler().fit(raw)
        loc, scale = s.mean_, s.scale_
    elif kind == "log_return":  # returns keep their centre (0: a move); DERIVED inputs are standardised
        r = _returns(raw, columns)[1:]
        loc, scale = np.zeros(f), r.std(axis=0) if len(r) > 1 else np.ones(f)
        derived = [j for j, c in enumerate(columns) if c in DERIVED]
        if len(r) > 1:
            loc[derived] = r[:, derived].mean(axis=0)
    else:  # window: prices need nothing; volume (log) is standardised
        loc, scale = np.zeros(f), np.ones(f)
        for j, c in enumerate(columns):
            if c == "volume" or c in DERIVED:
                loc[j], scale[j] = raw[:, j].mean(), raw[:, j].std()
    scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
    if kind == "log_return":  # volatility in the target's own unit: 0 when the last year moved as the train rows did
        vol = [j for j, c in enumerate(columns) if c == "volatility"]
        loc[vol], scale[vol] = np.log(scale[0]), 1.0
    return SeriesTransform(kind, tuple(columns), np.asarray(loc, float), np.asarray(scale, float))


@dataclass
class Windows:
    """Windows of one or many series. Shapes: x (N, W, F), y (N, H), last (N,), and for each
    window its series (``sid``) and the row index of its last input day (``end``)."""

    x: np.ndarray
    y: np.ndarray
    last: np.ndarray
    sid: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def empty(window: int, horizon: int, n_features: int) -> Windows:
        return Windows(np.zeros((0, window, n_features), np.float32), np.zeros((0, horizon), np.float32),
                       np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        return Windows(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                         ("x", "y", "last", "sid", "end")))


def series_windows(df: pd.DataFrame, tf: SeriesTransform, window: int, horizon: int,
                   ends: np.ndarray | None = None, sid: int = 0, with_target: bool = True) -> Windows:
    """Windows of one series ending at the row indices ``ends`` (default: every complete one).

    Window i uses input rows ``ends[i]-window+1 .. ends[i]`` and, when ``with_target``,
    targets ``ends[i]+1 .. ends[i]+horizon``.
    """
    raw = _raw_matrix(df, tf.columns)
    n = len(raw)
    first = _first_end(window, tf.kind)
    last_end = n - 1 - (horizon if with_target else 0)
    if ends is None:
        ends = np.arange(first, last_end + 1)
    ends = np.asarray(ends, dtype=np.int64)
    ends = ends[(ends >= first) & (ends <= last_end)]
    if len(ends) == 0:  # too short for even one window
        return Windows.empty(window, horizon, len(tf.columns))
    price = raw[:, 0]
    if tf.kind == "log_return":
        base = (_returns(raw, tf.columns) - tf.loc) / tf.scale
    elif tf.kind == "window":
        base = raw
    else:
        base = (raw - tf.loc) / tf.scale
    # (T-W+1, F, W) view -> windows ending at each row, then (N, W, F)
    x = sliding_window_view(base, window, axis=0)[ends - window + 1].transpose(0, 2, 1)
    if tf.kind == "window":
        x = x.copy()
        prices = [j for j, c in enumerate(tf.columns) if c != "volume" and c not in DERIVED]
        x[:, :, prices] = x[:, :, prices] / x[:, -1:, 0:1] - 1  # relative to the last close
        vol = [j for j, c in enumerate(tf.columns) if c == "volume" or c in DERIVED]
        x[:, :, vol] = (x[:, :, vol] - tf.loc[vol]) / tf.scale[vol]
    last = price[ends]
    if with_target:
        future = sliding_window_view(price, horizon)[ends + 1]  # (N, H) prices p[t+1..t+H]
        y = price_to_target(future, last, tf)
    else:
        y = np.zeros((len(ends), horizon))
    return Windows(x.astype(np.float32), y.astype(np.float32), last, np.full(len(ends), sid), ends)


def price_to_target(future: np.ndarray, last: np.ndarray, tf: SeriesTransform) -> np.ndarray:
    """Prices (N, H) -> targets in model space; ``last`` (N,) is p[t]."""
    last = last[:, None]
    if tf.kind == "log_return":
        return np.log(future / last) / tf.scale[0]
    if tf.kind == "window":
        return future / last - 1
    return (future - tf.loc[0]) / tf.scale[0]


def to_price(pred: np.ndarray, last: np.ndarray, tf: SeriesTransform) -> np.ndarray:
    """Model outputs (N, H, ...) -> prices; the inverse of ``price_to_target``."""
    last = last.reshape((-1,) + (1,) * (pred.ndim - 1))
    if tf.kind == "log_return":
        return last * np.exp(pred * tf.scale[0])
    if tf.kind == "window":
        return last * (1 + pred)
    return pred * tf.scale[0] + tf.loc[0]


def split_ends(split: SeriesSplit, window: int, horizon: int, part: str) -> np.ndarray:
    """Window end rows whose targets all fall inside ``part`` (inputs may reach back into
    earlier parts, which is the past and no leak)."""
    lo, hi = {"train": (0, split.val), "val": (split.val, split.test), "test": (split.test, split.n)}[part]
    # targets are rows end+1 .. end+horizon, so end in [lo-1, hi-1-horizon]
    return np.arange(max(lo - 1, window - 1), hi - horizon)


def naive_scale(df: pd.DataFrame, target: str, train_end: int) -> float:
    """MASE denominator: mean absolute one-day change of the target over the train rows."""
    p = df[target].to_numpy(float)[:train_end]
    d = np.abs(np.diff(p))
    return float(d.mean()) if len(d) and d.mean() > 0 else 1.0


def min_rows(window: int, horizon: int, val_frac: float, test_frac: float, by_date: bool = False) -> int:
    """Shortest series that still gives one training window after the split."""
    need = window + 1 + horizon
    return need if by_date else int(np.ceil(need / max(1e-9, 1 - val_frac - test_frac)))


@dataclass
class ForecastData:
    """Everything a forecaster trains and is evaluated on, per series and pooled.

    The windows of a part are built on first use, so a process that only needs their numbers
    (``counts``: per series), or only validation and test, never holds the training windows."""

    tickers: list[str]
    columns: tuple[str, ...]
    transforms: list[SeriesTransform]
    splits: list[SeriesSplit]
    mase_scale: np.ndarray  # (S,) per-series naive one-day MAE on train rows
    counts: dict[str, np.ndarray]  # part -> (S,) windows of each series
    build: Callable[[str], Windows] = field(repr=False)

    @cached_property
    def train(self) -> Windows:
        return self.build("train")

    @cached_property
    def val(self) -> Windows:
        return self.build("val")

    @cached_property
    def test(self) -> Windows:
        return self.build("test")

    @property
    def n_features(self) -> int:
        return len(self.columns)


def make_forecast_data(series: dict[str, pd.DataFrame], *, target: str = "close",
                       features: tuple[str, ...] = ("close",), transform: str = "log_return",
                       window: int = 60, horizon: int = 5, val_frac: float = 0.15,
                       test_frac: float = 0.15, val_start: str | None = None,
                       test_start: str | None = None) -> ForecastData:
    """Split each series by time and fit its transform on its train rows; the windows of each
    part are built when first used (``ForecastData.train`` ...), their numbers known at once."""
    cols = feature_columns(target, features)
    tickers = sorted(series)
    tfs, splits, scales = [], [], []
    for t in tickers:
        df = series[t]
        sp = split_series(df["date"], val_frac, test_frac, val_start, test_start)
        fit_end = max(sp.val, min(sp.n, MIN_FIT_ROWS, max(sp.test, _first_end(window, transform) + 1)))
        tfs.append(fit_transform(df, cols, transform, fit_end))
        splits.append(sp)
        scales.append(naive_scale(df, target, fit_end))
    counts = {part: np.array([window_count(sp, transform, window, horizon, part) for sp in splits], dtype=np.int64)
              for part in SPLITS}

    def build(part: str) -> Windows:
        got = [series_windows(series[t], tf, window, horizon, split_ends(sp, window, horizon, part), sid)
               for sid, (t, tf, sp) in enumerate(zip(tickers, tfs, splits))]
        return Windows.concat(got) if got else Windows.empty(window, horizon, len(cols))

    return ForecastData(tickers, cols, tfs, splits, np.asarray(scales), counts, build)


def window_count(split: SeriesSplit, transform: str, window: int, horizon: int, part: str) -> int:
    """How many windows ``series_windows`` makes of one series' ``part``, without making them."""
    lo, hi = {"train": (0, split.val), "val": (split.val, split.test), "test": (split.test, split.n)}[part]
    return max(0, min(hi - horizon, split.n - horizon) - max(lo - 1, window - 1, _first_end(window, transform)))


def _first_end(window: int, transform: str) -> int:
    """The first row a window can end at: log returns need one day more."""
    return window - 1 + (1 if transform == "log_return" else 0)


def windows_to_price(pred: np.ndarray, w: Windows, transforms: list[SeriesTransform]) -> np.ndarray:
    """Model outputs for pooled windows (N, H, ...) -> prices, each with its own series' transform."""
    out = np.empty(pred.shape, dtype=np.float64)
    for sid in np.unique(w.sid):
        m = w.sid == sid
        out[m] = to_price(pred[m], w.last[m], transforms[sid])
    return out


def shrink_to(prices: np.ndarray, anchor: np.ndarray, weight: float, mid: int) -> np.ndarray:
    """Blend the median forecast with an anchor: median' = anchor + weight * (median - anchor).

    ``prices`` (N, H, Q) in price units; ``anchor`` (N,) the last observed close (persistence) or
    (N, H) a price per step (``drift_anchor``). Every quantile moves with the median, so band
    widths stay as the model predicted them."""
    if weight == 1.0:
        return prices
    anchor = anchor[:, None] if anchor.ndim == 1 else anchor
    shift = (1.0 - weight) * (prices[..., mid] - anchor)  # (N, H)
    return prices - shift[..., None]


def drift_anchor(price: np.ndarray, ends: np.ndarray, horizon: int, days: int = VOL_DAYS) -> np.ndarray:
    """(N, H) the price at each end row moved by the median h-day log return of the trailing
    ``days`` (the overlapping h-day returns between prices ``end - days .. end``, fewer near the
    start, none before row h: no move): a random walk with drift, centred where the random-walk
    baseline of bench/baselines.py centres its quantiles."""
    logp, ends = np.log(price), np.asarray(ends, dtype=np.int64)
    out = np.zeros((len(ends), horizon))
    full = ends >= days
    for h in range(1, horizon + 1):
        moves = logp[h:] - logp[:-h]  # moves[j]: from row j to row j + h
        if full.any():  # the last `days` + 1 prices: moves[end - days .. end - h]
            out[full, h - 1] = np.median(sliding_window_view(moves, days - h + 1)[ends[full] - days], axis=1)
        for i in np.flatnonzero(~full & (ends >= h)):
            out[i, h - 1] = np.median(moves[:ends[i] - h + 1])
    return price[ends][:, None] * np.exp(out)


def point_index(quantiles) -> int:
    """Where the point forecast (the median) sits on the quantile axis; 0 for a point model."""
    return list(quantiles).index(0.5) if quantiles else 0


CENTRES = ("persistence", "drift")  # what the median is blended with: bundle.json's data.point_centre


def point_anchor(centre: str, price: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """The anchor ``ordered_forecast`` blends the median with, for windows ending at ``ends`` of a
    series whose target prices are ``price``: the last close (N,), or ``drift_anchor``'s (N, H)."""
    if centre not in CENTRES:
        raise ValueError(f"point centre must be one of {CENTRES}, got {centre!r}")
    return price[ends] if centre == "persistence" else drift_anchor(price, ends, horizon)


def ordered_forecast(prices: np.ndarray, anchor: np.ndarray, weight: float, mid: int) -> np.ndarray:
    """Model outputs in price units (N, H, Q) -> the quantiles every path publishes and scores:
    put in order along Q for each (window, step), then the median blended with ``anchor`` (the last
    close, or ``drift_anchor``'s prices) by ``weight``.

    Sorting is the rearrangement of Chernozhukov, Fernandez-Val and Galichon (2010, "Quantile and
    probability curves without crossing", Econometrica 78(3)): ordered quantiles are never further
    from the true ones, and never worse in pinball loss: swapping a crossed pair a > b at levels
    t1 < t2 lowers a row's summed loss by (t2 - t1) * (a - b), whatever the actual value. The
    point forecast is the median after sorting; the blend then shifts every quantile of a (window,
    step) by the same amount, so the order survives it."""
    return shrink_to(np.sort(prices, axis=-1), anchor, weight, mid)


def fit_shrink(median: np.ndarray, actual: np.ndarray, last: np.ndarray, step: float = 0.05) -> float:
    """The weight in [0, 1] (on a grid) whose blend of ``median`` (N, H) with persistence has the
    lowest MAE against ``actual`` (N, H): fitted on validation windows, never on test ones."""
    naive = last[:, None]
    weights = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    maes = [np.abs(actual - (naive + w * (median - naive))).mean() for w in weights]
    return float(weights[int(np.argmin(maes))])
