"""The promotion gate (rnnlib.gate) without Ray: the same points for every side, figures that
equal the per-ticker backtest metrics scoring computes its own way, and the decision."""

import shutil

import pytest
import torch

from rnnlib.checkpoint import load_bundle, save_bundle
from rnnlib.config import job_from_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.fit import fit
from rnnlib.gate import GateSettings, backtest, compare, min_rows
from rnnlib.scoring import score_histories
from rnnlib.stocks import load_histories
from rnnlib.tasks import ForecastTask

QUANTILES = [0.05, 0.1, 0.5, 0.9, 0.95]
DAYS = 30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gate") / "data"
    d.mkdir()
    for name in ("AAPL", "BA", "KO", "XOM"):
        shutil.copy(sample_stocks_dir() / f"{name}_data.csv", d)
    return d


def _cfg(data, window, horizon=5):
    return job_from_dict({"model": {"hidden": 8, "layers": 1}, "train": {"epochs": 2, "batch_size": 256},
                          "data": {"path": str(data), "window": window, "horizon": horizon, "quantiles": QUANTILES}})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    fit(_cfg(data, 20), out=out, log=lambda s: None)
    return load_bundle(out, task="forecast")


@pytest.fixture(scope="module")
def untrained(data, tmp_path_factory):
    """Random init with another window and a 3-day horizon, the model alone (no blend with
    persistence): a bad model."""
    task = ForecastTask(_cfg(data, 30, horizon=3))
    torch.manual_seed(1)
    out = save_bundle(tmp_path_factory.mktemp("untrained") / "model", task.build_model().eval(), task="forecast",
                      model_args=task.model_args(), **task.bundle_kwargs())
    return load_bundle(out, task="forecast")


@pytest.fixture(scope="module")
def hist(data, trained, untrained):
    return load_histories(data, needed=("close",), min_rows=min_rows([trained, untrained], DAYS))


def test_figures_equal_the_per_ticker_backtest_metrics(trained, hist):
    d = compare(trained, None, hist, GateSettings(days=DAYS, persistence_rmae_tolerance=10))
    res = score_histories(trained, hist, mode="backtest", backtest_days=DAYS, step=1)
    m = res.metrics  # per ticker, from metrics.compare_to_persistence and metrics.pinball(per=)
    w = m["windows"].to_numpy()
    assert d.candidate["points"] == len(res.forecasts) == int(w.sum()) * 5
    assert d.candidate["rmae"] == pytest.approx((m.mae * w).sum() / (m.persistence_mae * w).sum(), rel=1e-9)
    assert d.candidate["pinball"] == pytest.approx((m.pinball * w).sum() / w.sum(), rel=1e-9)
    assert d.persistence["pinball"] == pytest.approx((m.persistence_pinball * w).sum() / w.sum(), rel=1e-9)
    assert d.candidate["coverage"] == pytest.approx((m.coverage * w).sum() / w.sum(), rel=1e-9)
    assert d.champion is None and d.promote


def test_both_sides_on_the_same_points_and_the_decision(trained, untrained, hist):
    s = GateSettings(days=DAYS, persistence_rmae_tolerance=10)  # this test is about the champion
    win = compare(trained, untrained, hist, s)
    # the untrained model forecasts 3 steps, from origins up to 3 days before the end; the trained
    # one 5 steps, up to 5 days before: only the points both forecast count
    mine, theirs = backtest(trained, hist, DAYS), backtest(untrained, hist, DAYS)
    common = mine.merge(theirs, on=["ticker", "origin", "step"])
    assert win.candidate["points"] == win.champion["points"] == len(common) < min(len(mine), len(theirs))
    assert win.promote and not win.reasons
    assert win.candidate["rmae"] < win.champion["rmae"] and win.candidate["pinball"] < win.champion["pinball"]

    lose = compare(untrained, trained, hist, s)
    assert not lose.promote
    assert any("rMAE" in r and "the champion's" in r for r in lose.reasons)
    assert any("pinball loss" in r and "the champion's" in r for r in lose.reasons)
    # the same points, the sides swapped: the same figures
    assert lose.candidate == win.champion and lose.champion == win.candidate
    assert "candidate" in lose.table() and "champion" in lose.table() and "persistence" in lose.table()

    # against persistence alone: an untrained log-return model forecasts about no move, so it is
    # close to persistence (within the default 2% slack), and refused without the slack
    slack = compare(untrained, None, hist, GateSettings(days=DAYS))
    assert 1.0 < slack.candidate["rmae"] <= 1.02 and slack.promote
    strict = compare(untrained, None, hist, GateSettings(days=DAYS, persistence_rmae_tolerance=0))
    assert not strict.promote and strict.reasons[0].startswith("rMAE") and "persistence's 1.0000" in strict.reasons[0]
