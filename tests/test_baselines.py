"""The forecast-quality baselines (bench/baselines.py) and the figures forecast_quality reports from
them, on synthetic series whose true distribution is known. No Ray; a few seconds."""

import sys

import numpy as np
import pytest
from conftest import ROOT, optional
from scipy import stats

sys.path.insert(0, str(ROOT / "bench"))
import baselines  # noqa: E402
import forecast_quality  # noqa: E402

Q = [0.1, 0.5, 0.9]


def gaussian_walk(n: int = 3000, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.concatenate([[0.0], np.cumsum(rng.normal(0, sigma, n - 1))]))


def garch_path(n: int, seed: int = 0, omega=0.05, alpha=0.1, beta=0.85) -> np.ndarray:
    """Daily log returns in percent from a GARCH(1,1) with Student-t (6) innovations."""
    rng = np.random.default_rng(seed)
    z = rng.standard_t(6, n) / np.sqrt(6 / 4)
    r, var = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        r[t] = np.sqrt(var) * z[t]
        var = omega + alpha * r[t] ** 2 + beta * var
    return r


def actuals(prices: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return prices[origins[:, None] + np.arange(1, horizon + 1)]


def test_random_walk_band_covers_80_percent_of_a_gaussian_walk():
    prices, horizon = gaussian_walk(), 5
    origins = np.arange(300, len(prices) - horizon, horizon)
    q = baselines.random_walk_quantiles(prices, origins, horizon, Q)
    act = actuals(prices, origins, horizon)
    assert q.shape == (len(origins), horizon, 3) and np.isfinite(q).all()
    assert (np.diff(q, axis=-1) >= 0).all()
    for h in range(horizon):  # every step, so quantiles of 1-day returns at step 5 would fail
        covered = ((act[:, h] >= q[:, h, 0]) & (act[:, h] <= q[:, h, 2])).mean()
        assert 0.74 <= covered <= 0.86, (h + 1, covered)
    # the band at step h is about sqrt(h) times the one-day band: 2 * 1.2816 * sigma * sqrt(h)
    width = np.log(q[..., 2] / q[..., 0]).mean(axis=0)
    assert np.allclose(width, 2 * stats.norm.ppf(0.9) * 0.01 * np.sqrt(np.arange(1, horizon + 1)), rtol=0.12)


def test_random_walk_is_leak_free_and_uses_what_past_exists():
    prices = gaussian_walk(800)
    changed = prices.copy()
    changed[401:] *= np.exp(np.random.default_rng(1).normal(0, 0.05, len(prices) - 401))
    origins = np.array([100, 400, 500])
    a = baselines.random_walk_quantiles(prices, origins, 5, Q)
    b = baselines.random_walk_quantiles(changed, origins, 5, Q)
    np.testing.assert_array_equal(a[:2], b[:2])  # origins 100 and 400 see nothing after 400
    assert not np.allclose(a[2], b[2])
    # origin 100: under a year of past, its 100 returns are used; under 60 returns: no forecast
    short = baselines.random_walk_quantiles(prices, np.array([59, 60]), 5, Q)
    assert np.isnan(short[0]).all() and np.isfinite(short[1]).all()
    np.testing.assert_array_equal(baselines.enough_history(np.array([59, 60, 400])), [False, True, True])


def test_garch_is_leak_free_reproducible_and_refits_monthly():
    optional("arch")
    prices = 100 * np.exp(np.concatenate([[0.0], np.cumsum(garch_path(700) / 100)]))
    origins = np.arange(450, 700 - 5, 5)  # 49 origins over 240 days
    a, info = baselines.garch_quantiles(prices, origins, 5, Q, paths=500)
    assert np.isfinite(a).all() and (np.diff(a, axis=-1) >= 0).all()
    # refits at most monthly: one at 450, then 475, 500, ... (21 days or more after the last)
    assert info.fits == 10 and sorted(info.params) == list(range(450, 700, 25)) and info.failed == 0
    again, _ = baselines.garch_quantiles(prices, origins, 5, Q, paths=500)
    np.testing.assert_array_equal(a, again)
    changed = prices.copy()
    changed[461:] *= np.exp(np.random.default_rng(1).normal(0, 0.05, len(prices) - 461))
    b, _ = baselines.garch_quantiles(changed, origins, 5, Q, paths=500)
    np.testing.assert_array_equal(a[:3], b[:3])  # origins 450, 455, 460
    assert not np.allclose(a[3], b[3])
    short, _ = baselines.garch_quantiles(prices, np.array([30, 59]), 5, Q, paths=200)
    assert np.isnan(short).all()


def test_garch_band_widens_after_a_volatility_burst():
    optional("arch")
    r = garch_path(900, seed=3)
    r[880:895] = 6 * np.sign(np.random.default_rng(2).normal(size=15))  # 15 days of +-6% moves
    prices = 100 * np.exp(np.concatenate([[0.0], np.cumsum(r / 100)]))
    origins = np.array([879, 895])  # the day before the burst, and its last day (no refit between)
    q, info = baselines.garch_quantiles(prices, origins, 5, Q, paths=2000)
    assert info.fits == 1
    width = (q[:, :, 2] - q[:, :, 0]) / prices[origins][:, None]
    assert (width[1] > 2 * width[0]).all(), width
    rw = baselines.random_walk_quantiles(prices, origins, 5, Q)
    rw_width = (rw[:, :, 2] - rw[:, :, 0]) / prices[origins][:, None]
    assert (width[1] / width[0] > rw_width[1] / rw_width[0]).all()  # the random walk reacts less


def test_figures_reward_true_quantiles_over_shifted_ones():
    rng = np.random.default_rng(0)
    n, per = 20000, np.full(20000, 100.0)
    actual = 100 + 2 * rng.standard_normal(n)
    true = 100 + 2 * stats.norm.ppf(Q)[None, :].repeat(n, 0)
    good = forecast_quality.quality(actual, per, true, Q)
    shifted = forecast_quality.quality(actual, per, true + 1.0, Q)
    wide = forecast_quality.quality(actual, per, 100 + 4 * stats.norm.ppf(Q)[None, :].repeat(n, 0), Q)
    assert good["pinball"] < shifted["pinball"] and good["pinball"] < wide["pinball"]
    assert good["max_calibration_error"] < 1.5 < shifted["max_calibration_error"]
    assert abs(good["coverage"] - 0.8) < 0.01 and wide["coverage"] > 0.95
    assert good["band_width"] == pytest.approx(4 * stats.norm.ppf(0.9) / 100)
    assert wide["band_width"] == pytest.approx(2 * good["band_width"])
    assert good["below"]["q10"] == pytest.approx(0.1, abs=0.01)
    assert good["rmae"] == pytest.approx(1.0) and shifted["rmae"] > 1  # a median of 100 is persistence itself


def test_drift_anchor_is_the_random_walk_baselines_median():
    """``point_shrink: drift`` centres the median where the random-walk baseline centres its
    quantiles: the median h-day log return of the trailing year, from the past only."""
    from rnnlib.features import drift_anchor, point_anchor

    rng = np.random.default_rng(3)
    prices = 50 * np.exp(np.cumsum(rng.normal(0.001, 0.02, 700)))
    ends = np.array([60, 100, 251, 252, 253, 400, 694])
    want = baselines.random_walk_quantiles(prices, ends, 5, [0.5])[..., 0]
    np.testing.assert_allclose(drift_anchor(prices, ends, 5), want, rtol=1e-12)
    np.testing.assert_allclose(point_anchor("drift", prices, ends, 5), want, rtol=1e-12)
    changed = prices.copy()
    changed[401:] *= 3  # what comes after an end never moves its anchor
    np.testing.assert_array_equal(drift_anchor(changed, ends[:6], 5), drift_anchor(prices, ends[:6], 5))
    assert (drift_anchor(prices, np.array([0]), 5) == prices[0]).all()  # no past move: no drift
    np.testing.assert_array_equal(point_anchor("persistence", prices, ends, 5), prices[ends])
