import numpy as np
import pandas as pd
import pytest

from rnnlib.datasets import sample_stocks_dir
from rnnlib.features import (
    TRANSFORMS,
    SeriesTransform,
    fit_transform,
    make_forecast_data,
    price_to_target,
    series_windows,
    split_ends,
    split_series,
    to_price,
)
from rnnlib.stocks import load_histories


def naive_windows(df, window, horizon, column="close"):
    """The obviously right way: one Python loop iteration per window."""
    p = df[column].to_numpy(float)
    xs, ys = [], []
    for end in range(window - 1, len(p) - horizon):
        xs.append(p[end - window + 1:end + 1])
        ys.append(p[end + 1:end + 1 + horizon])
    return np.array(xs), np.array(ys)


@pytest.fixture(scope="module")
def series():
    return load_histories(sample_stocks_dir(), min_rows=100, needed=("close", "volume")).series


def test_vectorised_windows_equal_naive_loop(series):
    df = series["KO"]
    tf = SeriesTransform("minmax", ("close",), np.zeros(1), np.ones(1))  # identity scaling
    w = series_windows(df, tf, window=20, horizon=5)
    xs, ys = naive_windows(df, 20, 5)
    assert w.x.shape == (len(xs), 20, 1)
    np.testing.assert_allclose(w.x[..., 0], xs, rtol=1e-6)
    np.testing.assert_allclose(w.y, ys, rtol=1e-6)
    np.testing.assert_allclose(w.last, xs[:, -1])


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_targets_invert_to_prices(series, kind):
    df = series["MSFT"]
    tf = fit_transform(df, ("close", "volume"), kind, train_end=700)
    w = series_windows(df, tf, window=10, horizon=3)
    # y's inverse gives back the real future prices
    future = np.stack([df.close.to_numpy()[e + 1:e + 4] for e in w.end])
    np.testing.assert_allclose(to_price(w.y.astype(float), w.last, tf), future, rtol=1e-4)
    np.testing.assert_allclose(price_to_target(future, w.last, tf), w.y, rtol=1e-4, atol=1e-5)
    assert np.isfinite(w.x).all()


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_scaler_depends_only_on_train_rows(series, kind):
    df = series["PG"]
    sp = split_series(df["date"], 0.15, 0.15)
    before = fit_transform(df, ("close", "volume"), kind, sp.val)
    changed = df.copy()
    changed.loc[sp.test + 5:, "close"] *= 10  # a wild test-period price
    changed.loc[sp.val:, "volume"] *= 100
    after = fit_transform(changed, ("close", "volume"), kind, sp.val)
    np.testing.assert_array_equal(before.loc, after.loc)
    np.testing.assert_array_equal(before.scale, after.scale)
    # ... and the train windows do not move either
    tr = split_ends(sp, 30, 5, "train")
    np.testing.assert_array_equal(series_windows(df, before, 30, 5, tr).x,
                                  series_windows(changed, after, 30, 5, tr).x)



def test_a_series_that_began_late_in_training_is_scaled_by_its_first_rows_never_its_test(series):
    """One train row: its scale comes from its first MIN_FIT_ROWS rows (in validation), not the
    unfitted 1.0; the test rows still never reach it."""
    from rnnlib.features import MIN_FIT_ROWS, make_forecast_data

    df = series["PG"]
    late = {"PG": df, "NEW": df.iloc[700:].reset_index(drop=True)}  # begins the day before val_start
    val_start, test_start = str(df["date"][701].date()), str(df["date"][1000].date())
    data = make_forecast_data(late, val_start=val_start, test_start=test_start, window=10, horizon=5)
    sp, tf = data.splits[0], data.transforms[0]
    assert data.tickers[0] == "NEW" and sp.val == 1
    want = np.diff(np.log(late["NEW"]["close"].to_numpy()[:MIN_FIT_ROWS])).std()
    assert abs(tf.scale[0] - want) < 1e-9 and 0.003 < tf.scale[0] < 0.05  # a daily return's size, not 1.0
    changed = {**late, "NEW": late["NEW"].assign(close=lambda d: d.close.where(d.index < sp.test, d.close * 10))}
    again = make_forecast_data(changed, val_start=val_start, test_start=test_start, window=10, horizon=5)
    np.testing.assert_array_equal(again.transforms[0].scale, tf.scale)


def test_a_series_that_began_in_the_test_period_is_scaled_by_the_rows_before_its_first_forecast(series):
    """No train or val row: fitted on the rows up to its first test window's last day (the past of
    every window it has), never on the unfitted 1.0 nor on a row any window forecasts."""
    from rnnlib.features import make_forecast_data

    df = series["PG"]
    late = {"PG": df, "NEW": df.iloc[1000:].reset_index(drop=True)}  # begins at test_start
    val_start, test_start = str(df["date"][700].date()), str(df["date"][1000].date())
    data = make_forecast_data(late, val_start=val_start, test_start=test_start, window=10, horizon=5)
    sp, tf, w = data.splits[0], data.transforms[0], data.test
    assert data.tickers[0] == "NEW" and sp.val == sp.test == 0
    first = w.end[w.sid == 0].min()
    assert first == 10  # log returns: the first window ends on row 10
    want = np.diff(np.log(late["NEW"]["close"].to_numpy()[:first + 1])).std()
    assert tf.scale[0] == pytest.approx(want, rel=1e-12) and 0.003 < tf.scale[0] < 0.05
    changed = {**late, "NEW": late["NEW"].assign(close=lambda d: d.close.where(d.index <= first, d.close * 10))}
    again = make_forecast_data(changed, val_start=val_start, test_start=test_start, window=10, horizon=5)
    np.testing.assert_array_equal(again.transforms[0].scale, tf.scale)


def test_range_and_gap_are_the_days_log_ratios_read_from_their_columns(series):
    from rnnlib.features import _raw_matrix, source_columns

    assert source_columns(("close", "range", "gap", "volume")) == ("close", "high", "low", "open", "volume")
    df = load_histories(sample_stocks_dir() / "KO_data.csv", needed=("open", "high", "low", "close")).series["KO"]
    raw = _raw_matrix(df, ("close", "range", "gap"))
    k = 100
    assert raw[k, 1] == np.log(df.high[k] / df.low[k]) and raw[k, 2] == np.log(df.open[k] / df.close[k - 1])
    assert raw[0, 2] == 0 and (raw[:, 1] >= 0).all()
    tf = fit_transform(df, ("close", "range", "gap"), "log_return", 700)
    w = series_windows(df, tf, window=10, horizon=3)  # a ratio is an input as it is, scaled, never differenced
    np.testing.assert_allclose(w.x[0, :, 1], (raw[w.end[0] - 9:w.end[0] + 1, 1] - tf.loc[1]) / tf.scale[1],
                               rtol=1e-5, atol=1e-6)
    assert tf.loc[0] == 0 and tf.loc[1] == pytest.approx(raw[1:700, 1].mean())  # a return keeps 0 as its centre


def test_volatility_is_the_trailing_years_rms_return_up_to_each_day_and_never_ahead():
    from rnnlib.features import VOL_DAYS, _raw_matrix, source_columns, trailing_volatility

    df = load_histories(sample_stocks_dir() / "KO_data.csv", needed=("close",)).series["KO"]
    p = df["close"].to_numpy(float)
    r = np.diff(np.log(p))  # r[k - 1] is the return into day k
    v = trailing_volatility(p)
    for k in (1, 5, VOL_DAYS, VOL_DAYS + 1, len(p) - 1):
        past = r[max(0, k - VOL_DAYS):k]
        assert v[k] == pytest.approx(np.log(np.sqrt(np.mean(past ** 2))), rel=1e-9), k
    assert v[0] == v[1]
    changed = p.copy()
    changed[600:] *= np.linspace(1, 3, len(p) - 600)  # a different future leaves the past alone
    np.testing.assert_array_equal(trailing_volatility(changed)[:600], v[:600])
    # made from the target, whichever it is, so loading reads nothing more for it
    assert source_columns(("close", "volatility")) == ("close",)
    np.testing.assert_array_equal(_raw_matrix(df, ("close", "volatility"))[:, 1], v)
    tf = fit_transform(df, ("close", "volatility"), "log_return", 700)
    w = series_windows(df, tf, window=10, horizon=3)
    # the log of the trailing year's volatility over the train rows' (the target's unit): near 0
    assert tf.loc[1] == pytest.approx(np.log(tf.scale[0])) and tf.scale[1] == 1
    np.testing.assert_allclose(w.x[:, -1, 1], v[w.end] - np.log(tf.scale[0]), rtol=1e-5, atol=1e-6)
    assert abs(np.median(w.x[:700, -1, 1])) < 0.5
    flat = df.assign(close=10.0)  # a price that never moved: no -inf, however unfitted
    tf = fit_transform(flat, ("close", "volatility"), "log_return", 700)
    assert tf.loc[1] == 0 and np.isfinite(series_windows(flat, tf, window=10, horizon=3).x).all()

def test_split_ends_keep_targets_inside_their_part(series):
    df = series["JNJ"]
    sp = split_series(df["date"], 0.15, 0.15)
    w, h = 30, 5
    spans = {p: split_ends(sp, w, h, p) for p in ("train", "val", "test")}
    assert spans["train"].max() + h < sp.val
    assert spans["val"].min() + 1 >= sp.val and spans["val"].max() + h < sp.test
    assert spans["test"].min() + 1 >= sp.test and spans["test"].max() + h < sp.n


def test_split_by_cutoff_dates(series):
    df = series["KO"]
    sp = split_series(df["date"], 0.1, 0.1, "2016-01-04", "2017-01-03")
    assert df.date.iloc[sp.val] == pd.Timestamp("2016-01-04")
    assert df.date.iloc[sp.test - 1] < pd.Timestamp("2017-01-03") <= df.date.iloc[sp.test]


def test_forecast_data_pools_series_with_their_own_scalers(series):
    sub = {t: series[t] for t in ("KO", "AAPL", "EBAY")}
    data = make_forecast_data(sub, window=20, horizon=5)
    assert data.tickers == ["AAPL", "EBAY", "KO"]
    assert data.train.x.shape[1:] == (20, 1) and data.val.y.shape[1] == 5
    assert set(np.unique(data.test.sid)) == {0, 1, 2}
    assert data.transforms[0].scale[0] != data.transforms[2].scale[0]


def test_fit_shrink_picks_the_validation_blend():
    from rnnlib.features import fit_shrink, shrink_to

    rng = np.random.default_rng(0)
    last = np.full(2000, 100.0)
    actual = last[:, None] + rng.normal(0, 1, (2000, 3))
    useless = last[:, None] + rng.normal(0, 1, (2000, 3))  # noise: persistence is better
    assert fit_shrink(useless, actual, last) <= 0.1
    good = actual + rng.normal(0, 0.3, (2000, 3))  # close to the truth: keep the model
    assert fit_shrink(good, actual, last) >= 0.9
    prices = np.stack([useless - 1, useless, useless + 1], axis=-1)
    shrunk = shrink_to(prices, last, 0.0, 1)
    np.testing.assert_allclose(shrunk[..., 1], np.broadcast_to(last[:, None], (2000, 3)))
    np.testing.assert_allclose(shrunk[..., 2] - shrunk[..., 0], 2.0)
