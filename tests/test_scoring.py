"""rnnlib.scoring and rnnlib.publish without Ray."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rnnlib import publish
from rnnlib.bundle import load_bundle, save_bundle
from rnnlib.config import job_from_dict, to_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.features import drift_anchor, series_windows, shrink_to, to_price, windows_to_price
from rnnlib.fit import fit
from rnnlib.loop import predict
from rnnlib.metrics import pinball
from rnnlib.scoring import MODES, quantile_column, score_files
from rnnlib.tasks import ForecastTask

FILES = sorted(sample_stocks_dir().glob("*.csv"))
KO = sample_stocks_dir() / "KO_data.csv"
QUANTILES = [0.05, 0.1, 0.5, 0.9, 0.95]
Q_COLUMNS = ["q05", "q10", "q50", "q90", "q95"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fc") / "model"
    cfg = job_from_dict({"model": {"hidden": 8, "layers": 1}, "data": {"window": 20, "horizon": 5},
                         "train": {"epochs": 1, "batch_size": 512}})
    fit(cfg, out=out, log=lambda s: None)
    return load_bundle(out, task="forecast")


def test_forecast_rows_dates_and_band(bundle):
    res = score_files(bundle, FILES[:5], as_of="2017-12-29")
    f = res.forecasts
    # APTV starts 2017-12-04: too short before as_of, so it is rejected, not scored
    assert sorted(f.ticker.unique()) == ["AAPL", "AMZN", "AOS", "BA"] and len(f) == 4 * 5
    aptv = res.rejects[res.rejects.ticker == "APTV"]
    assert list(aptv.action) == ["reject_series"] and "too short to score after as_of 2017-12-29" in aptv.reason.iloc[0]
    assert (f.as_of == pd.Timestamp("2017-12-29")).all()
    first = f[f.ticker == f.ticker.iloc[0]]
    assert list(first.step) == [1, 2, 3, 4, 5]
    assert list(first.date) == list(pd.bdate_range("2018-01-01", periods=5))
    assert (f.lo_80 <= f.forecast).all() and (f.forecast <= f.hi_80).all()
    assert (f.scaler == "bundle").all() and res.rows_after_as_of > 0
    # the forecast is close to the last price for a one-week horizon
    assert (np.abs(f.forecast / f.last_close - 1) < 0.2).all()


def test_backtest_equals_direct_rnnlib_predictions(bundle):
    res = score_files(bundle, [sample_stocks_dir() / "KO_data.csv"], mode="backtest", backtest_days=60, step=5)
    bt = res.forecasts
    df = res.hist.series["KO"]
    tf = bundle.transforms["KO"]
    origins = sorted(bt.origin.unique())
    ends = np.flatnonzero(df.date.isin(origins).to_numpy())
    w = series_windows(df, tf, 20, 5, ends)
    raw = np.sort(to_price(predict(bundle.model, w.x).astype(np.float64), w.last, tf), axis=-1)  # in order
    weight = bundle.data["point_weight"]  # the blend with persistence fitted on validation at training
    assert 0.0 <= weight <= 1.0
    direct = shrink_to(raw, w.last, weight, 1)
    np.testing.assert_allclose(bt.forecast.to_numpy(), direct[..., 1].ravel(), rtol=1e-6)  # the median
    np.testing.assert_allclose(bt[["q10", "q50", "q90"]].to_numpy(), direct.reshape(-1, 3), rtol=1e-6)
    np.testing.assert_allclose(direct[..., 1] - direct[..., 0], raw[..., 1] - raw[..., 0])  # band width kept
    np.testing.assert_allclose(direct[..., 1] - w.last[:, None], weight * (raw[..., 1] - w.last[:, None]))
    future = df.close.to_numpy()[ends[:, None] + np.arange(1, 6)]
    np.testing.assert_allclose(bt.actual.to_numpy().reshape(-1, 5), future)
    m = res.metrics.iloc[0]
    assert m.ticker == "KO" and m.windows == len(origins)
    assert m.rmae == pytest.approx(m.mae / m.persistence_mae)


def test_unknown_ticker_fits_its_own_scaler_and_bad_files_are_rejected(bundle, tmp_path):
    df = pd.read_csv(sample_stocks_dir() / "KO_data.csv").assign(Name="NEWCO")
    df.to_csv(tmp_path / "NEWCO_data.csv", index=False)
    (tmp_path / "BAD_data.csv").write_text("date,close\n<html>oops</html>,1\n")
    res = score_files(bundle, [tmp_path / "NEWCO_data.csv", tmp_path / "BAD_data.csv"])
    assert set(res.forecasts.ticker) == {"NEWCO"} and (res.forecasts.scaler == "history").all()
    assert "BAD" in set(res.rejects.ticker) and res.hist.rows_in == res.hist.rows_kept + res.hist.rows_rejected


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A five-quantile forecaster straight from random init (no epoch), its median blended half
    way with persistence: (task, model, bundle). Its raw quantile outputs cross."""
    tmp = tmp_path_factory.mktemp("untrained")
    (tmp / "data").mkdir()
    for name in ("AAPL", "BA", "KO"):
        shutil.copy(sample_stocks_dir() / f"{name}_data.csv", tmp / "data")
    cfg = job_from_dict({"model": {"hidden": 8, "layers": 1},
                         "data": {"path": str(tmp / "data"), "window": 20, "horizon": 5, "quantiles": QUANTILES}})
    task = ForecastTask(cfg)
    torch.manual_seed(0)
    model = task.build_model().eval()
    task.point_weight = 0.5  # as calibrate() would set it: quantiles move with the blended median
    out = save_bundle(tmp / "model", model, task="forecast", model_args=task.model_args(), **task.bundle_kwargs())
    return task, model, load_bundle(out, task="forecast")


@pytest.mark.parametrize("q, name", [(0.05, "q05"), (0.1, "q10"), (0.5, "q50"), (0.9, "q90"), (0.95, "q95"),
                                     (0.975, "q97.5"), (0.025, "q02.5"), (0.07, "q07"), (0.58, "q58")])
def test_quantile_column_names(q, name):
    assert quantile_column(q) == name


def _quantiles_of(frame: pd.DataFrame, horizon: int = 5) -> np.ndarray:
    """One ticker's quantile columns as (windows, horizon, Q)."""
    return frame[Q_COLUMNS].to_numpy().reshape(-1, horizon, len(Q_COLUMNS))


@pytest.mark.parametrize("mode", MODES)
def test_every_quantile_a_column_in_order(untrained, mode):
    _, model, bundle = untrained
    res = score_files(bundle, [KO, sample_stocks_dir() / "BA_data.csv"], mode=mode, backtest_days=60, step=5)
    f = res.forecasts
    assert [c for c in f.columns if c.startswith("q")] == Q_COLUMNS and len(f) > 0
    qs = f[Q_COLUMNS].to_numpy()
    assert (np.diff(qs, axis=1) >= 0).all()  # q05 <= q10 <= q50 <= q90 <= q95 on every row
    np.testing.assert_array_equal(f.forecast, f.q50)
    np.testing.assert_array_equal(f.lo_90, f.q05)
    np.testing.assert_array_equal(f.hi_90, f.q95)
    assert ((f.lo_90 <= f.forecast) & (f.forecast <= f.hi_90)).all()
    # the sort does something: this model's own outputs cross on some rows, and the published
    # quantiles are exactly those outputs sorted, then blended with persistence
    ko = f[f.ticker == "KO"]
    df = res.hist.series["KO"]
    ends = np.flatnonzero(df.date.isin(ko.iloc[:, 1].unique()).to_numpy())  # as_of or origin
    tf = bundle.transforms["KO"]
    w = series_windows(df, tf, 20, 5, ends, with_target=False)
    raw = to_price(predict(model, w.x).astype(np.float64), w.last, tf)  # (N, H, Q)
    assert (np.diff(raw, axis=-1) < 0).any()
    np.testing.assert_allclose(_quantiles_of(ko), shrink_to(np.sort(raw, axis=-1), w.last, 0.5, 2),
                               rtol=1e-6)
    # the same columns, in the same order, when nothing can be scored
    empty = score_files(bundle, [KO], mode=mode, as_of="2013-03-01").forecasts
    assert len(empty) == 0 and list(empty.columns) == list(f.columns)


def test_backtest_pinball_is_scale_free_and_beside_persistence(untrained):
    _, _, bundle = untrained
    res = score_files(bundle, [KO], mode="backtest", backtest_days=60, step=5)
    bt = res.forecasts
    actual = bt.actual.to_numpy().reshape(-1, 5, 1)
    last = bt.persistence.to_numpy().reshape(-1, 5, 1)  # the price at each origin
    tau = np.array(QUANTILES)

    def loss(pred):  # pinball, written out: tau * u above the quantile, (1 - tau) * -u below
        u = actual - pred
        return float(np.mean(np.where(u >= 0, tau * u, (tau - 1) * u) / last))

    m = res.metrics.iloc[0]
    assert m.pinball == pytest.approx(loss(_quantiles_of(bt)), rel=1e-9)
    assert m.persistence_pinball == pytest.approx(loss(np.broadcast_to(last, (len(last), 5, 5))), rel=1e-9)
    assert m.pinball > 0 and m.persistence_pinball > 0


def test_training_metrics_use_the_ordered_quantiles(untrained):
    task, model, _ = untrained
    w = task.data.test
    raw = windows_to_price(predict(model, w.x), w, task.data.transforms)
    actual = windows_to_price(w.y, w, task.data.transforms)
    ordered = shrink_to(np.sort(raw, axis=-1), w.last, 0.5, 2)
    m = task.final_metrics(model)
    assert m["pinball"] == pytest.approx(pinball(actual, ordered, QUANTILES), rel=1e-9)
    inside = (actual >= ordered[..., 0]) & (actual <= ordered[..., -1])
    assert m["model"]["coverage"] == pytest.approx(inside.mean())
    # the raw outputs cross, and crossing costs pinball loss: sorting (the rearrangement) takes it back
    assert (np.diff(raw, axis=-1) < 0).any()
    assert pinball(actual, np.sort(raw, axis=-1), QUANTILES) < pinball(actual, raw, QUANTILES)


def test_drift_centre_puts_the_median_on_the_random_walk_with_drift_in_scoring_and_training(untrained, tmp_path):
    task, model, _ = untrained
    drift = ForecastTask(job_from_dict({**to_dict(task.cfg), "data": {**to_dict(task.cfg)["data"],
                                                                      "point_shrink": "drift"}}))
    assert drift.calibrate(model) == 0.0
    bundle = load_bundle(save_bundle(tmp_path / "model", model, task="forecast", model_args=drift.model_args(),
                                     **drift.bundle_kwargs()), task="forecast")
    assert bundle.data["point_centre"] == "drift" and bundle.data["point_weight"] == 0.0
    res = score_files(bundle, [KO], mode="backtest", backtest_days=60, step=5)
    df = res.hist.series["KO"]
    ends = np.flatnonzero(df.date.isin(res.forecasts.origin.unique()).to_numpy())
    q = _quantiles_of(res.forecasts)
    anchor = drift_anchor(df.close.to_numpy(float), ends, 5)
    np.testing.assert_allclose(q[..., 2], anchor, rtol=1e-9)
    assert np.abs(anchor / df.close.to_numpy()[ends, None] - 1).max() > 1e-4  # a drift, not the last close
    tf = bundle.transforms["KO"]  # the band is the model's own, moved with its median
    raw = np.sort(to_price(predict(model, series_windows(df, tf, 20, 5, ends, with_target=False).x)
                           .astype(np.float64), df.close.to_numpy()[ends], tf), axis=-1)
    np.testing.assert_allclose(q - q[..., 2:3], raw - raw[..., 2:3], rtol=1e-6, atol=1e-6)
    # training's test metrics take the same path
    w = drift.data.test
    actual = windows_to_price(w.y, w, drift.data.transforms)
    assert drift.final_metrics(model)["model"]["mae"] == pytest.approx(
        np.abs(actual - drift._anchor(w, "drift")).mean(), rel=1e-9)


def test_publish_commit_once_verify_and_corruption(tmp_path):
    run = str(tmp_path / "run=abc")
    df = pd.DataFrame({"a": [1, 2, 3]})
    files = [publish.write_part(run, "forecasts/part-1.parquet", df, "forecasts")]
    assert publish.commit(run, "att1", {"files": files})
    loser = [publish.write_part(run, "forecasts/part-att2-x.parquet", df, "forecasts")]
    assert not publish.commit(run, "att2", {"files": loser})
    assert not (tmp_path / "run=abc" / "forecasts" / "part-att2-x.parquet").exists()
    v = publish.verify(run)
    assert v.ok and v.checked == 1
    p = tmp_path / "run=abc" / "forecasts" / "part-1.parquet"
    p.write_bytes(p.read_bytes()[:-3] + b"xyz")
    v = publish.verify(run)
    assert not v.ok and "forecasts/part-1.parquet: sha256 differs" in v.problems[0]
    assert not publish.verify(str(tmp_path / "nothing")).ok


def test_a_model_on_the_days_range_and_gap_scores_from_the_columns_they_are_made_of(tmp_path):
    """Inputs made of two columns (range: high and low; gap: open and the day before's close): the
    model is trained on them, and scoring reads those columns back from plain OHLCV files."""
    out = tmp_path / "model"
    cfg = job_from_dict({"model": {"hidden": 8, "layers": 1},
                         "data": {"window": 20, "horizon": 5, "features": ["close", "range", "gap"]},
                         "train": {"epochs": 1, "batch_size": 512}})
    res = fit(cfg, out=out, log=lambda s: None)
    b = load_bundle(out, task="forecast")
    assert b.data["columns"] == ["close", "range", "gap"] and res.task.data.train.x.shape[2] == 3
    got = score_files(b, [KO], mode="backtest", backtest_days=60, step=5)
    assert len(got.forecasts) and np.isfinite(got.forecasts["forecast"]).all()
