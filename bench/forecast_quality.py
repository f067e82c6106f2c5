"""Forecast quality of a train config on the S&P 500 protocol, against persistence.

Protocol (issue 4): the 505 histories of ../shared/data/stocks/sp500_5yr; the last 250 trading
days of each are the test period; the model is trained once on what came before (the year
before the test period validates, for early stopping); then rolling origins every `horizon`
days through the test period, each forecasting `horizon` days. Over every (ticker, origin, step):

    rMAE     = MAE(model) / MAE(persistence: the last observed close)
    coverage = share of actual prices inside the 80% band [q10, q90]

Each seed (--seeds, default 0 1 2) trains once and is scored twice: `point_shrink: off` (the
model alone) and `point_shrink: val` (the median blended with persistence by the weight fitted on
validation; a weight of 0 is persistence itself, rMAE 1.000). The table gives each seed, then
the spread over seeds (mean, min, max).

    python bench/forecast_quality.py [--config CONFIG] [--seeds 0 1 2] [--quick] [key=value ...]
Target: rMAE < 1.00 (strictly better than persistence) and coverage within 75-85%, on every seed.
Trains in-process (no Ray): this measures the model, not the launcher; `rnnjobs train` runs the
same rnnlib code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import write  # noqa: E402

from rnnlib.bundle import load_bundle  # noqa: E402
from rnnlib.config import load_job, to_dict  # noqa: E402
from rnnlib.datasets import sample_stocks_dir  # noqa: E402
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


def run_seed(cfg, test_start: str) -> dict:
    """Train once with ``cfg`` (``point_shrink: val``), then backtest the test period twice:
    {"val": the median blended with persistence by the weight fitted on validation, "off": the
    model alone (weight 1)}, each with the training figures. The setting only decides the weight
    stored after training (``ForecastTask.calibrate``), so "off" is what ``point_shrink: off``
    trains and scores, without training the same model twice."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(cfg, out=Path(tmp) / "model", log=lambda s: print("  " + s, flush=True))
        train_s = time.perf_counter() - t0
        fitted = load_bundle(res.bundle, task="forecast")
    trained = {"train_seconds": round(train_s, 1), "epochs": len(res.history),
               "best_val": float(min(h["val_loss"] for h in res.history))}
    out = {}
    for shrink, weight in (("off", 1.0), ("val", fitted.data.get("point_weight", 1.0))):
        bundle = replace(fitted, meta={**fitted.meta, "data": {**fitted.data, "point_weight": weight}})
        t1 = time.perf_counter()
        scored = score_histories(bundle, res.task.hist, mode="backtest", backtest_days=TEST_DAYS,
                                 step=cfg.data.horizon)
        out[shrink] = {**evaluate(scored.forecasts, test_start, list(cfg.data.quantiles)), "point_weight": weight,
                       **trained, "backtest_seconds": round(time.perf_counter() - t1, 1)}
    return out


def met(f: dict) -> bool:
    """The target: strictly better than persistence (a weight of 0 is persistence itself, rMAE
    1.000), with a calibrated 80% band."""
    return f["rmae"] < 1.0 and 0.75 <= f.get("coverage_80", np.nan) <= 0.85


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))} .. {fmt.format(max(values))})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "jobs/configs/forecast-train.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/stocks/sp500_5yr"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each run (default 0 1 2)")
    p.add_argument("--quick", action="store_true", help="the bundled 26-ticker sample and 2 epochs (a smoke run)")
    p.add_argument("--tag", default="default", help="name of this run in the JSON output")
    p.add_argument("--val-days", type=int, default=VAL_DAYS,
                   help="trading days before the test period that validate (early stopping, blend weight)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args()
    data = str(sample_stocks_dir()) if a.quick else a.data
    overrides = [*(["train.epochs=2"] if a.quick else []), *a.overrides, "data.point_shrink=val"]
    val_start, test_start = split_dates(data, a.val_days)
    job = lambda seed: load_job(a.config, [f"data.path={data}", f"data.val_start={val_start}",
                                           f"data.test_start={test_start}", *overrides, f"train.seed={seed}"])
    runs = {}
    for seed in a.seeds:
        cfg = job(seed)
        print(f"seed {seed}: train before {val_start}, validate {val_start}..{test_start}, test from {test_start}; "
              f"{cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, window {cfg.data.window}, "
              f"horizon {cfg.data.horizon}, {cfg.data.transform}", flush=True)
        runs[seed] = run_seed(cfg, test_start)

    rows = [[seed, r["val"]["point_weight"], r["off"]["rmae"], r["val"]["rmae"], r["off"].get("coverage_80", np.nan),
             r["val"].get("coverage_80", np.nan), r["off"]["tickers_better_than_persistence"],
             r["val"]["tickers_better_than_persistence"], r["off"]["epochs"], r["off"]["train_seconds"]]
            for seed, r in runs.items()]
    print(f"\n{data}: {runs[a.seeds[0]]['off']['points']:,} (ticker, origin, step) points in the test period\n")
    print(table(rows, ["seed", "fitted weight", "rMAE off", "rMAE val", "coverage off", "coverage val",
                       "tickers better off", "tickers better val", "epochs", "train s"]))
    summary, rows = {}, []
    for shrink in ("off", "val"):
        figs = [r[shrink] for r in runs.values()]
        values = {k: [f.get(k, np.nan) for f in figs] for k in ("rmae", "coverage_80", "point_weight")}
        summary[shrink] = {"seeds_met": sum(map(met, figs)), "target_met": all(map(met, figs)),
                           **{k: {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))}
                              for k, v in values.items()}}
        rows.append([f"point_shrink: {shrink}", spread(values["rmae"], "{:.3f}"),
                     spread(values["coverage_80"], "{:.1%}"), spread(values["point_weight"], "{:.2f}"),
                     f"{summary[shrink]['seeds_met']} of {len(runs)}"])
    print("\n" + table(rows, [f"{len(runs)} seeds: mean (min .. max)", "rMAE", "80% coverage", "weight",
                              "seeds meeting the target"]))
    print("target: rMAE < 1.00 (strictly better than persistence; weight 0 is persistence, rMAE 1.000) and "
          "coverage 75-85%, on every seed: " + ", ".join(f"{s} {'MET' if v['target_met'] else 'NOT MET'}"
                                                         for s, v in summary.items()))
    out = write(f"forecast_quality-{a.tag}", {"config": to_dict(job(a.seeds[0])), "seeds": a.seeds, "runs": runs,
                                              "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
