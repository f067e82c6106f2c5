"""The promotion gate (rnnlib.gate) without Ray: the same points for every side, figures that
equal the per-ticker backtest metrics scoring computes its own way, and the decision."""

import shutil

import pytest
import torch

from rnnlib.bundle import load_bundle, save_bundle
from rnnlib.config import GateConfig, job_from_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.fit import fit
from rnnlib.gate import backtest, compare, min_rows
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
    d = compare(trained, None, hist, GateConfig(days=DAYS, persistence_rmae_tolerance=10))
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
    s = GateConfig(days=DAYS, persistence_rmae_tolerance=10)  # this test is about the champion
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
    slack = compare(untrained, None, hist, GateConfig(days=DAYS))
    assert 1.0 < slack.candidate["rmae"] <= 1.02 and slack.promote
    strict = compare(untrained, None, hist, GateConfig(days=DAYS, persistence_rmae_tolerance=0))
    assert not strict.promote and strict.reasons[0].startswith("rMAE") and "persistence's 1.0000" in strict.reasons[0]


def test_models_gate_promotes_refuses_and_records(trained, untrained, data, tmp_path):
    import json

    from jobhelpers import cli

    from rnnlib.registry import Registry

    reg = Registry(str(tmp_path / "registry"))
    assert reg.register("fc", str(trained.path))["version"] == 1
    assert reg.register("fc", str(untrained.path))["version"] == 2
    common = ["--histories", str(data), "--registry", reg.uri, "--days", str(DAYS), "--persistence-rmae-tolerance",
              "10"]
    code, out = cli("models", "gate", "fc", "2", *common, "--dry-run")
    assert code == 0 and "passed; fc@champion not moved (--dry-run)" in out
    assert reg.alias_target("fc", "champion") is None
    code, out = cli("models", "gate", "fc", "1", *common)
    assert code == 0 and "PROMOTED: fc@champion -> version 1" in out, out
    move = reg.alias_target("fc", "champion")
    assert move["version"] == 1 and move["previous"] is None and move["figures"]["champion"] is None

    code, out = cli("models", "gate", "fc", "2", *common)  # the bad model against the champion
    assert code == 1 and "REFUSED: rMAE" in out and "fc@champion stays version 1" in out, out
    assert reg.alias_target("fc", "champion")["version"] == 1
    (record,) = [r for r in reg.notes("fc", 2, "gates") if r["champion"] == 1]
    hist = load_histories(data, needed=("close",), min_rows=min_rows([trained, untrained], DAYS))
    expected = compare(untrained, trained, hist, GateConfig(days=DAYS, persistence_rmae_tolerance=10))
    assert record["figures"]["candidate"] == pytest.approx(expected.candidate)
    assert record["figures"]["champion"] == pytest.approx(expected.champion)
    assert record["promote"] is False and record["reasons"] == expected.reasons
    assert json.loads(json.dumps(record)) == record  # plain JSON beside the registry entry


def test_release_registers_once_and_gates_once(trained, data, tmp_path, capsys):
    from jobs.models import release

    cfg = job_from_dict({"data": {"path": str(data), "window": 20, "quantiles": QUANTILES},
                         "release": {"model": "fc", "registry": str(tmp_path / "reg"),
                                     "gate": {"days": DAYS, "persistence_rmae_tolerance": 10}}})
    release(cfg, str(trained.path), "run-a", {"sha256": "d" * 64})
    out = capsys.readouterr().out
    assert "registered fc version 1" in out and "PROMOTED: fc@champion -> version 1" in out
    release(cfg, str(trained.path), "run-a", {"sha256": "d" * 64})  # the same command again
    out = capsys.readouterr().out
    assert "already registered: fc version 1" in out and "already gated" in out and "PROMOTED" not in out
    from rnnlib.registry import Registry

    reg = Registry(str(tmp_path / "reg"))
    assert [v["version"] for v in reg.versions("fc")] == [1] and len(reg.notes("fc", 1, "gates")) == 1
    assert reg.version("fc", 1)["data"] == {"sha256": "d" * 64, "run": "run-a"}
