"""What a quant would use instead of the forecaster: two probabilistic baselines (issue 17).

Both are pure functions of one price series and the row indices of the forecast origins; both
return quantiles in price units, shape (origins, horizon, quantiles), the layout the model's
backtest has. Each uses only prices up to and including its origin (leak free).

random walk (``random_walk_quantiles``)
    The price at step h is the last price times exp(q), q the empirical quantile of the
    series' own past h-day log returns over a trailing year (252 trading days; the overlapping
    h-day returns whose both ends lie in that year). Drift, fat tails and the level of volatility
    of the last year carry over; volatility clustering does not.
GARCH(1,1) with Student-t innovations (``garch_quantiles``)
    Constant mean, GARCH(1,1) variance and standardised Student-t innovations, estimated by the
    `arch` package on the series' whole past of daily log returns (in percent, the scale `arch`
    expects). Refitted when an origin is ``refit_days`` or more past the last fit (monthly),
    warm started from the last fit; between refits the last fit's parameters are kept and the
    variance recursion is run through the returns up to each origin, so each forecast starts
    from the day's own conditional variance. The h-day log return is the sum of the simulated
    daily returns (``paths`` paths, seeded by the origin: reproducible); its quantiles map to
    prices as above. The sum of GARCH-t returns has no closed form, hence the simulation.

An origin with fewer than ``min_returns`` past daily returns gets NaN from both (no forecast):
the caller skips that point for every method and says how many. A random walk with less than a
year of past uses what there is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

TRADING_YEAR = 252
MIN_RETURNS = 60
REFIT_DAYS = 21


def enough_history(origins: np.ndarray, min_returns: int = MIN_RETURNS) -> np.ndarray:
    """Which origins have ``min_returns`` past daily returns: origin row i has i of them."""
    return np.asarray(origins) >= min_returns


def _check(prices: np.ndarray, origins: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    prices, origins = np.asarray(prices, dtype=np.float64), np.asarray(origins, dtype=np.int64)
    if prices.ndim != 1 or (prices <= 0).any() or not np.isfinite(prices).all():
        raise ValueError("prices must be a 1-d series of positive, finite prices")
    if len(origins) and (origins.min() < 0 or origins.max() >= len(prices)):
        raise ValueError(f"origins must be row indices into the {len(prices)} prices")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return prices, origins


def random_walk_quantiles(prices: np.ndarray, origins: np.ndarray, horizon: int, quantiles: list[float], *,
                          lookback: int = TRADING_YEAR, min_returns: int = MIN_RETURNS) -> np.ndarray:
    """Empirical random-walk quantiles: prices (T,), origins (N,) row indices -> (N, horizon, Q).

    At origin i the window is the last min(lookback, i) daily returns (prices i-L .. i); step h
    takes the quantiles of the L-h+1 overlapping h-day log returns inside it."""
    prices, origins = _check(prices, origins, horizon)
    logp, q = np.log(prices), np.asarray(quantiles, dtype=np.float64)
    out = np.full((len(origins), horizon, len(q)), np.nan)
    for n, i in enumerate(origins):
        if i < max(min_returns, horizon):
            continue
        window = logp[i - min(lookback, i): i + 1]  # L + 1 prices, L daily returns
        for h in range(1, horizon + 1):
            out[n, h - 1] = np.quantile(window[h:] - window[:-h], q)
    return prices[origins][:, None, None] * np.exp(out)


@dataclass
class GarchFits:
    """What the GARCH baseline did for one series: fits, fits whose optimiser did not report
    convergence (their parameters are used all the same), fits that failed (the last good one is
    kept; before any, the origin gets NaN), and each fit's parameters keyed by its origin."""

    fits: int = 0
    not_converged: int = 0
    failed: int = 0
    params: dict[int, dict[str, float]] = field(default_factory=dict)


def garch_quantiles(prices: np.ndarray, origins: np.ndarray, horizon: int, quantiles: list[float], *,
                    min_returns: int = MIN_RETURNS, refit_days: int = REFIT_DAYS, paths: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, GarchFits]:
    """GARCH(1,1)-t quantiles: prices (T,), origins (N,) row indices -> ((N, horizon, Q), GarchFits).

    Origins are visited in increasing order; a fit at origin i uses returns 1..i (percent log
    returns of prices 0..i), and so does each forecast from it, whatever comes after i."""
    try:
        from arch.univariate import GARCH, ConstantMean, StudentsT
    except ImportError as e:  # a bench-only dependency
        raise ImportError("the GARCH baseline needs the arch package: pip install -c constraints.txt "
                          "-e '.[bench]'") from e
    prices, origins = _check(prices, origins, horizon)
    returns = 100 * np.diff(np.log(prices))  # returns[k] is the day from price k to price k+1
    q = np.asarray(quantiles, dtype=np.float64)
    out = np.full((len(origins), horizon, len(q)), np.nan)
    info, params, fitted_at = GarchFits(), None, None
    # the simulation draws from the distribution's own generator: seeded per origin, so reproducible
    model = lambda i: ConstantMean(returns[:i], volatility=GARCH(p=1, q=1), rescale=False,
                                   distribution=StudentsT(seed=np.random.default_rng([seed, i])))
    for n in np.argsort(origins, kind="stable"):
        i = int(origins[n])
        if i < min_returns:
            continue
        if fitted_at is None or i - fitted_at >= refit_days:
            info.fits += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence is counted below instead
                    res = model(i).fit(disp="off", starting_values=None if params is None else params.to_numpy())
                if not np.isfinite(res.params.to_numpy()).all():
                    raise ValueError("non-finite parameters")
                params, fitted_at = res.params, i
                info.not_converged += int(res.convergence_flag != 0)
                info.params[i] = {k: float(v) for k, v in params.items()}
            except (ValueError, np.linalg.LinAlgError):
                info.failed += 1
        if params is None:
            continue
        sim = model(i).fix(params).forecast(horizon=horizon, method="simulation", simulations=paths, reindex=False)
        paths_h = np.cumsum(sim.simulations.values[-1], axis=1) / 100  # (paths, horizon) h-day log returns
        out[n] = np.quantile(paths_h, q, axis=0).T
    return prices[origins][:, None, None] * np.exp(out), info

