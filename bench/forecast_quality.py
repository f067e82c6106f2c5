"""Forecast quality of a train config on the S&P 500 protocol, against persistence.

Protocol (issue 4): the 505 histories of ../shared/data/stocks/sp500_5yr; the last 250 trading
days of each are the test period; the model is trained once on what came before (the year
before the test period validates, for early stopping); then rolling origins every `horizon`
days through the test period, each forecasting `horizon` days. Over every (ticker, origin, step):

    rMAE     = MAE(model) / MAE(persistence: the last observed close)
    coverage = share of actual prices inside the 80% band [q10, q90]

    python bench/forecast_quality.py [--config jobs/configs/forecast-train.yaml] [key=value ...]
Targets: rMAE <= 1.00 and coverage within 75-85%. Trains in-process (no Ray): this measures the
model, not the launcher; `rnnjobs train` runs the same rnnlib code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import write  # noqa: E402

from rnnlib.bundle import load_bundle  # noqa: E402
from rnnlib.config import load_job, to_dict  # noqa: E402
from rnnlib.fit import fit  # noqa: E402
from rnnlib.scoring import band_names, score_histories  # noqa: E402
from rnnlib.stocks import load_histories  # noqa: E402
from rnnlib.tables import table  # noqa: E402

TEST_DAYS, VAL_DAYS = 250, 250


def split_dates(source: str, val_days: int = VAL_DAYS) -> tuple[str, str]:
    """The first date of the last TEST_DAYS trading days, and of the ``val_days`` before them."""
    hist = load_histories(source, min_rows=1)
    dates = sorted(set().union(*(set(df["date"]) for df in hist.series.values())))
    return (str(dates[-TEST_DAYS - val_days].date()), str(dates[-TEST_DAYS].date()))


def evaluate(backtest: pd.DataFrame, test_start: str, quantiles: list[float]) -> dict:
    bt = backtest[backtest["date"] >= pd.Timestamp(test_start)]  # only targets in the test period
    err, naive = (bt["actual"] - bt["forecast"]).abs(), (bt["actual"] - bt["persistence"]).abs()
    out = {"tickers": int(bt["ticker"].nunique()), "origins": int(bt.groupby("ticker")["origin"].nunique().sum()),
           "points": len(bt), "mae_model": float(err.mean()), "mae_persistence": float(naive.mean()),
           "rmae": float(err.mean() / naive.mean())}
    per = (bt.assign(e=err, n=naive).groupby("ticker")[["e", "n"]].mean())
    out["tickers_better_than_persistence"] = float((per["e"] < per["n"]).mean())
    band = band_names(quantiles)
    if band:
        lo, hi = band
        out["coverage_80"] = float(((bt["actual"] >= bt[lo]) & (bt["actual"] <= bt[hi])).mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "jobs/configs/forecast-train.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/stocks/sp500_5yr"))
    p.add_argument("--tag", default="default", help="name of this run in the JSON output")
    p.add_argument("--val-days", type=int, default=VAL_DAYS,
                   help="trading days before the test period that validate (early stopping, blend weight)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args()
    val_start, test_start = split_dates(a.data, a.val_days)
    cfg = load_job(a.config, [f"data.path={a.data}", f"data.val_start={val_start}",
                              f"data.test_start={test_start}", *a.overrides])
    print(f"train before {val_start}, validate {val_start}..{test_start}, test from {test_start}; "
          f"{cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, window {cfg.data.window}, "
          f"horizon {cfg.data.horizon}, {cfg.data.transform}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(cfg, out=Path(tmp) / "model", log=lambda s: print(s, flush=True))
        train_s = time.perf_counter() - t0
        bundle = load_bundle(res.bundle, task="forecast")
    t1 = time.perf_counter()
    scored = score_histories(bundle, res.task.hist, mode="backtest", backtest_days=TEST_DAYS,
                             step=cfg.data.horizon)
    figures = evaluate(scored.forecasts, test_start, list(cfg.data.quantiles))
    figures.update(train_seconds=round(train_s, 1), backtest_seconds=round(time.perf_counter() - t1, 1),
                   epochs=len(res.history), best_val=float(min(h["val_loss"] for h in res.history)),
                   point_weight=bundle.data.get("point_weight", 1.0))
    ok = figures["rmae"] <= 1.0 and 0.75 <= figures.get("coverage_80", np.nan) <= 0.85
    print(table([[k, v] for k, v in figures.items()], ["figure", a.tag]))
    print(f"target rMAE <= 1.00 and coverage 75-85%: {'MET' if ok else 'NOT MET'}")
    out = write(f"forecast_quality-{a.tag}", {"config": to_dict(cfg), "figures": figures, "target_met": ok})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
