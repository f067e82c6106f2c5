"""How much pinball skill over the random walk the S&P test year allows a volatility model (issue 17).

The forecaster's bands are judged against a random walk with a trailing year's empirical quantiles
(bench/baselines.py). This script fits what a quant would build to beat that band on purpose, and
reports its skill on exactly the protocol's points, so the model's figures can be read against
what the data gives:

    HAR-RV (Corsi 2009, "A simple approximate long-memory model of realized volatility", J. Fin.
    Econometrics 7(2)) on daily data: log |h-day log return| / sqrt(h) regressed on the logs of
    the series' root mean square daily return over the last 5, 22, 63 and 252 days and, in the
    "+ range" row, its mean log(high/low) over the last 1, 5, 22 and 252 days (Parkinson 1980);
    in the "+ market" row also the market's: the log RMS over the last 1, 5 and 22 days of the
    day's mean log return over every series in the data, and the log of their mean range over
    the last 1 and 5 days (the issue's market-wide input, leak-free: days up to the origin);
    pooled over every series and every origin whose target lies before the test period (leak
    free), quantiles = exp(fit) * sqrt(h) * the quantiles of the standardised training returns.
    The last row fits each quantile by quantile regression (Koenker & Bassett 1978, "Regression
    quantiles", Econometrica 46(1)) on the same fitted scale and the random walk's own quantile,
    both per sqrt(h): a band that may lean, blend the two and shift, fitted to the pinball loss
    itself (on a seeded sample of QR_SAMPLE training points; crossed quantiles sorted).

Test points as forecast_quality.py makes them: origins every `horizon` days from the day before
the test period, targets inside it, origins with at least 60 past returns (a handful more points
than its table, which also needs the model's forecast and a GARCH fit at each).

    python bench/har_reference.py [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from baselines import MIN_RETURNS, TRADING_YEAR, random_walk_quantiles  # noqa: E402
from common import machine, write  # noqa: E402
from forecast_quality import quality, split_dates  # noqa: E402
from sklearn.linear_model import LinearRegression, QuantileRegressor  # noqa: E402

from rnnlib.stocks import load_histories  # noqa: E402
from rnnlib.tables import table  # noqa: E402

QUANTILES, HORIZON = np.array([0.1, 0.5, 0.9]), 5
VOL = {"rv5": 5, "rv22": 22, "rv63": 63, "rv252": TRADING_YEAR}
RANGE = {"rg1": 1, "rg5": 5, "rg22": 22, "rg252": TRADING_YEAR}
# the market: each day's mean over the series
MARKET_VOL, MARKET_RANGE = {"mrv1": 1, "mrv5": 5, "mrv22": 22}, {"mrg1": 1, "mrg5": 5}
MARKET = [*MARKET_VOL, *MARKET_RANGE]
RW = ["rw10", "rw50", "rw90"]
QR_SAMPLE = 20_000


def moves(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: the daily log return of the close (NaN on the first row) and the log high/low range."""
    return pd.DataFrame({"r": np.r_[np.nan, np.diff(np.log(df["close"].to_numpy(float)))],
                         "rg": np.log(df["high"].to_numpy(float) / df["low"].to_numpy(float))})


def trailing(m: pd.DataFrame, vol: dict, rng: dict, min_periods: int) -> pd.DataFrame:
    """Per row, from rows up to it only: log RMS of ``r`` and log mean of ``rg`` over trailing windows
    (``vol`` and ``rng``: column name -> days; at least min(days, min_periods) rows)."""
    with np.errstate(divide="ignore"):  # a day without a move: log 0, dropped below
        out = {k: np.log(np.sqrt((m["r"] ** 2).rolling(n, min_periods=min(n, min_periods)).mean()))
               for k, n in vol.items()}
        out |= {k: np.log(m["rg"].rolling(n, min_periods=min(n, min_periods)).mean()) for k, n in rng.items()}
    return pd.DataFrame(out, index=m.index).replace([np.inf, -np.inf], np.nan)


def features(df: pd.DataFrame) -> pd.DataFrame:
    """A series' own: log RMS daily return and log mean range over trailing windows."""
    return trailing(moves(df), VOL, RANGE, 5)


def market(hist) -> pd.DataFrame:
    """Per date, the market's: the same of the day's mean log return and mean range over every
    series trading that day."""
    daily = pd.concat([moves(df).assign(date=df["date"].to_numpy()) for df in hist.series.values()])
    return trailing(daily.groupby("date")[["r", "rg"]].mean().sort_index(), MARKET_VOL, MARKET_RANGE, 1)


def rw_log_quantiles(price: np.ndarray) -> np.ndarray:
    """(rows, HORIZON, 3): at every row at once, the log of random_walk_quantiles' (bench/baselines.py)
    quantiles over the last price: those of the h-day log returns within the trailing year."""
    logp, out = pd.Series(np.log(price)), np.full((len(price), HORIZON, len(QUANTILES)), np.nan)
    for h in range(1, HORIZON + 1):
        rolling = logp.diff(h).rolling(TRADING_YEAR - h + 1, min_periods=1)
        out[:, h - 1] = np.column_stack([rolling.quantile(q) for q in QUANTILES])
    return out


def points(hist, test_start: pd.Timestamp) -> pd.DataFrame:
    """Training points (every origin whose targets all precede the test period) and test points
    (origins every HORIZON days from the day before it, as the backtest makes them)."""
    rows, m = [], market(hist)
    for ticker, df in sorted(hist.series.items()):
        price = df["close"].to_numpy(float)
        f = pd.concat([features(df), m.reindex(df["date"].to_numpy()).reset_index(drop=True)], axis=1)
        n, t0 = len(df), int(np.searchsorted(df["date"].to_numpy(), np.datetime64(test_start)))
        rw_log = rw_log_quantiles(price)
        for part, origins in (("train", np.arange(MIN_RETURNS, t0 - HORIZON)),
                              ("test", np.arange(max(t0 - 1, 0), n - 1, HORIZON))):
            origins = origins[origins >= MIN_RETURNS]
            if not len(origins):
                continue
            rw = price[origins, None, None] * np.exp(rw_log[origins])
            if part == "test":  # the protocol's baseline itself; the rolling form must agree with it
                official = random_walk_quantiles(price, origins, HORIZON, list(QUANTILES))
                np.testing.assert_allclose(rw, official, rtol=1e-9, err_msg=ticker)
            for h in range(1, HORIZON + 1):
                ok = origins + h < n
                o = origins[ok]
                frame = f.iloc[o].reset_index(drop=True).assign(
                    part=part, ticker=ticker, h=h, last=price[o], actual=price[o + h])
                frame[RW] = rw[ok, h - 1]
                rows.append(frame)
    return pd.concat(rows, ignore_index=True).dropna(subset=[*VOL, *RANGE, *MARKET, *RW])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/stocks/sp500_5yr"))
    a = p.parse_args()
    t0 = time.perf_counter()
    hist = load_histories(a.data, min_rows=1, needed=("close", "high", "low"))
    _, test_start = split_dates(hist)
    pts = points(hist, pd.Timestamp(test_start))
    train, test = pts[pts["part"] == "train"], pts[pts["part"] == "test"]
    moved = np.log(train["actual"] / train["last"]).to_numpy()  # the training points' h-day log returns
    actual, last = test["actual"].to_numpy(), test["last"].to_numpy()
    quantiles = {"random walk (trailing year)": test[RW].to_numpy()}
    root_h, test_root_h = np.sqrt(train["h"].to_numpy()), np.sqrt(test["h"].to_numpy())
    for name, cols in (("HAR-RV", list(VOL)), ("HAR-RV + range", [*VOL, *RANGE]),
                       ("HAR-RV + range + market", [*VOL, *RANGE, *MARKET])):
        fit = LinearRegression().fit(train[cols], np.log(np.abs(moved) / root_h + 1e-5))
        train_scale, test_scale = np.exp(fit.predict(train[cols])), np.exp(fit.predict(test[cols]))  # per sqrt(h)
        z = np.quantile(moved / (train_scale * root_h), QUANTILES)
        quantiles[name] = last[:, None] * np.exp((test_scale * test_root_h)[:, None] * z)
    # quantile regression on the last row's (+ market) scale, beside the random walk's quantile (a log
    # return) per sqrt(h)
    sample = np.random.default_rng(0).choice(len(train), min(QR_SAMPLE, len(train)), replace=False)
    train_rw = np.log(train[RW].to_numpy() / train[["last"]].to_numpy()) / root_h[:, None]
    test_rw = np.log(test[RW].to_numpy() / last[:, None]) / test_root_h[:, None]
    qr = np.column_stack([
        QuantileRegressor(quantile=q, alpha=0, solver="highs")
        .fit(np.column_stack([train_scale, train_rw[:, j]])[sample], (moved / root_h)[sample])
        .predict(np.column_stack([test_scale, test_rw[:, j]])) for j, q in enumerate(QUANTILES)])
    quantiles["+ the RW's quantiles, quantile regression"] = last[:, None] * np.exp(
        np.sort(qr, axis=1) * test_root_h[:, None])
    figs = {name: quality(actual, last, q, list(QUANTILES)) for name, q in quantiles.items()}  # as forecast_quality
    base = figs["random walk (trailing year)"]["pinball"]
    rows, out = [], {}
    for name, f in figs.items():
        rows.append([name, f["pinball"], f"{1 - f['pinball'] / base:+.2%}", f"{f['coverage']:.1%}",
                     f"{f['band_width']:.2%}"])
        out[name] = {**{k: f[k] for k in ("pinball", "coverage", "band_width")}, "skill_rw": 1 - f["pinball"] / base}
    print(f"{a.data}: {len(test):,} test points ({test['ticker'].nunique()} tickers) from {test_start}, "
          f"fitted on {len(train):,} earlier points; {time.perf_counter() - t0:.0f} s\n")
    print(table(rows, ["method", "pinball", "skill vs RW", "coverage 80", "band width"]))
    write("har_reference", {"machine": machine(), "data": a.data, "test_points": len(test), **out})


if __name__ == "__main__":
    main()
