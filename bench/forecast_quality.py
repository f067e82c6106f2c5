"""Forecast quality of a train config on the S&P 500 protocol, against persistence.

Protocol (issue 4): the 505 histories of ../shared/data/stocks/sp500_5yr; the last 250 trading
days of each are the test period; the model is trained once on what came before (the year
before the test period validates, for early stopping); then rolling origins every `horizon`
days through the test period, each forecasting `horizon` days. Over every (ticker, origin, step):

    rMAE     = MAE(model) / MAE(persistence: the last observed close)
    coverage = share of actual prices inside the 80% band [q10, q90]

On exactly the same points, restricted to those every method can forecast, the quantile
forecasts are compared with two baselines a quant would use instead (issue 17; bench/baselines.py):
a random walk with the empirical quantiles of the series' own past h-day log returns over a
trailing year, and GARCH(1,1) with Student-t innovations (the `arch` package, the bench extra:
pip install -c constraints.txt -e '.[bench]'). For the model and each baseline:

    pinball   = mean over points and quantiles of the pinball loss / the price at the origin
    skill     = 1 - pinball(model) / pinball(baseline)
    width     = mean (q_hi - q_lo) / the price at the origin, the 80% band's width
    below qXX = share of actuals below that quantile (calibrated: XX%); max calibration error in points
    rMAE      = the median's MAE / persistence's MAE

A point whose origin has under 60 past daily returns has no baseline forecast: it is left out for
every method, and the count is printed.

Each seed (--seeds, default 0 1 2) trains once and is scored three times: `point_shrink: off`
(the model alone), `point_shrink: val` (the median blended with persistence by the weight fitted
on validation; a weight of 0 is persistence itself, rMAE 1.000) and `point_shrink: drift` (the
median moved to a random walk with drift, the band the model's). The table gives each seed, then
the spread over seeds (mean, min, max).

    python bench/forecast_quality.py [--config CONFIG] [--quick] [key=value ...] [--seeds 0 1 2]
    (--seeds takes every number after it: give it last)
Target: rMAE < 1.00 (strictly better than persistence) and coverage within 75-85%, on every seed.
Trains in-process (no Ray): this measures the model, not the launcher; `rnnjobs train` runs the
same rnnlib code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from baselines import MIN_RETURNS, GarchFits, garch_quantiles, random_walk_quantiles  # noqa: E402
from common import RESULTS, machine, write  # noqa: E402

from rnnlib.bundle import load_bundle  # noqa: E402
from rnnlib.config import load_job, to_dict  # noqa: E402
from rnnlib.datasets import sample_stocks_dir  # noqa: E402
from rnnlib.features import point_index  # noqa: E402
from rnnlib.fit import fit  # noqa: E402
from rnnlib.metrics import pinball_each  # noqa: E402
from rnnlib.scoring import band_level, band_names, quantile_column, score_histories  # noqa: E402
from rnnlib.stocks import load_histories  # noqa: E402
from rnnlib.tables import table  # noqa: E402

TEST_DAYS, VAL_DAYS = 250, 250


def split_dates(hist, val_days: int = VAL_DAYS) -> tuple[str, str]:
    """The first date of the ``val_days`` trading days before the last TEST_DAYS, and of those last
    TEST_DAYS, over every series of ``hist``."""
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


METHODS = {"rw": "random walk", "garch": "GARCH(1,1)-t"}


class Baselines:
    """The baselines' quantiles at every (ticker, origin, step) of a backtest, computed once (they
    do not depend on the seed) and joined to each scoring of the model."""

    def __init__(self, test_start: str, quantiles: list[float], horizon: int, target: str):
        self.test_start, self.quantiles, self.horizon, self.target = test_start, quantiles, horizon, target
        self.frame: pd.DataFrame | None = None
        self.info: dict = {}

    def _cache(self, forecasts: pd.DataFrame, hist) -> Path:
        """Where the baselines of these origins on this data are kept between runs (GARCH takes
        minutes): named by the series' content, the origins, the settings and baselines.py itself."""
        h = hashlib.sha256(json.dumps([self.test_start, self.quantiles, self.horizon, self.target]).encode())
        h.update((Path(__file__).parent / "baselines.py").read_bytes())
        for ticker, df in sorted(hist.series.items()):
            rows = pd.util.hash_pandas_object(df[["date", self.target]], index=False)
            h.update(ticker.encode() + rows.to_numpy().tobytes())
        keys = forecasts[["ticker", "origin"]].drop_duplicates().sort_values(["ticker", "origin"])
        h.update(pd.util.hash_pandas_object(keys, index=False).to_numpy().tobytes())
        return RESULTS / "cache" / f"baselines-{h.hexdigest()[:16]}.parquet"

    def _compute(self, forecasts: pd.DataFrame, hist) -> None:
        cache = self._cache(forecasts, hist)
        if cache.exists():
            self.frame = pd.read_parquet(cache)
            self.info = json.loads(cache.with_suffix(".json").read_text())
            print(f"  baselines: from {cache.relative_to(RESULTS.parent)} (computed in {self.info['seconds']} s)")
            return
        t0, parts, fits = time.perf_counter(), [], GarchFits()
        cols = [quantile_column(q) for q in self.quantiles]
        for ticker, origins in forecasts.groupby("ticker")["origin"].unique().items():
            df = hist.series[ticker]
            dates = df["date"].to_numpy()
            origins = np.sort(origins)
            idx = np.searchsorted(dates, origins)
            assert (dates[idx] == origins).all(), f"{ticker}: backtest origins not in its history"
            prices = df[self.target].to_numpy()
            rw = random_walk_quantiles(prices, idx, self.horizon, self.quantiles)
            garch, info = garch_quantiles(prices, idx, self.horizon, self.quantiles)
            for k in ("fits", "not_converged", "failed"):
                setattr(fits, k, getattr(fits, k) + getattr(info, k))
            frame = {"ticker": ticker, "origin": np.repeat(origins, self.horizon),
                     "step": np.tile(np.arange(1, self.horizon + 1), len(origins)),
                     "enough_history": np.repeat(idx >= MIN_RETURNS, self.horizon)}
            for name, q in (("rw", rw), ("garch", garch)):
                frame.update({f"{name}_{c}": q[..., j].ravel() for j, c in enumerate(cols)})
            parts.append(pd.DataFrame(frame))
        self.frame = pd.concat(parts, ignore_index=True)
        self.info = {"garch_fits": fits.fits, "garch_not_converged": fits.not_converged,
                     "garch_failed": fits.failed, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  baselines: {len(parts)} series in {self.info['seconds']} s; GARCH fits {fits.fits} "
              f"({fits.not_converged} not converged, {fits.failed} failed)", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(cache)
        cache.with_suffix(".json").write_text(json.dumps(self.info))

    def compare(self, forecasts: pd.DataFrame, hist) -> dict:
        """Figures of the model and both baselines on the test-period points every method forecasts."""
        if self.frame is None:
            self._compute(forecasts, hist)
        bt = forecasts[forecasts["date"] >= pd.Timestamp(self.test_start)]
        bt = bt.merge(self.frame, on=["ticker", "origin", "step"], how="left", validate="one_to_one")
        assert bt["enough_history"].notna().all(), "a scoring has points the baselines were not computed for"
        cols = [quantile_column(q) for q in self.quantiles]
        have = np.column_stack([bt[f"{m}_{c}"].notna() for m in METHODS for c in cols]).all(axis=1)
        short = ~bt["enough_history"].fillna(False).to_numpy(bool)
        kept = bt[have]
        out = {"points_test": len(bt), "points": len(kept), "tickers": int(kept["ticker"].nunique()),
               "skipped_short_history": int(short.sum()), "skipped_no_garch_fit": int((~have & ~short).sum()),
               "min_returns": MIN_RETURNS, "baselines": self.info}
        actual, per = kept["actual"].to_numpy(), kept["persistence"].to_numpy()
        methods = {"model": cols, **{m: [f"{m}_{c}" for c in cols] for m in METHODS}}
        figs = {m: quality(actual, per, kept[c].to_numpy(), self.quantiles) for m, c in methods.items()}
        for m in figs:
            for b in METHODS:
                figs[m][f"skill_{b}"] = 1 - figs[m]["pinball"] / figs[b]["pinball"]
        return {**out, **figs}


def quality(actual: np.ndarray, per: np.ndarray, qp: np.ndarray, quantiles: list[float]) -> dict:
    """actual, per (N,) the actual price and the price at the origin; qp (N, Q) quantiles in price units."""
    med = qp[:, point_index(quantiles)]
    below = [float((actual < qp[:, j]).mean()) for j in range(len(quantiles))]
    return {"rmae": float(np.abs(actual - med).mean() / np.abs(actual - per).mean()),
            "coverage": float(((actual >= qp[:, 0]) & (actual <= qp[:, -1])).mean()),
            "band_width": float(((qp[:, -1] - qp[:, 0]) / per).mean()),
            "pinball": float((pinball_each(actual, qp, quantiles) / per).mean()),
            "below": dict(zip(map(quantile_column, quantiles), below)),
            "max_calibration_error": float(100 * np.max(np.abs(np.subtract(below, quantiles))))}


SHRINKS = ("off", "val", "drift")


def run_seed(cfg, test_start: str, baselines: Baselines) -> dict:
    """Train once with ``cfg`` (``point_shrink: val``), then backtest the test period three times,
    one for each ``data.point_shrink``: {"off": the model alone (weight 1), "val": the median
    blended with persistence by the weight fitted on validation, "drift": the median moved to the
    random walk with drift (weight 0 toward ``features.drift_anchor``)}, each with the training
    figures. The setting only decides what is stored after training (``ForecastTask.calibrate``),
    so each is what that setting trains and scores, without training the same model three times."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(cfg, out=Path(tmp) / "model", log=lambda s: print("  " + s, flush=True))
        train_s = time.perf_counter() - t0
        fitted = load_bundle(res.bundle, task="forecast")
    trained = {"train_seconds": round(train_s, 1), "epochs": len(res.history),
               "best_val": float(min(h["val_loss"] for h in res.history))}
    out = {}
    stored = {"off": (1.0, "persistence"), "val": (fitted.data.get("point_weight", 1.0), "persistence"),
              "drift": (0.0, "drift")}
    for shrink in SHRINKS:
        weight, centre = stored[shrink]
        bundle = replace(fitted, meta={**fitted.meta, "data": {**fitted.data, "point_weight": weight,
                                                               "point_centre": centre}})
        t1 = time.perf_counter()
        scored = score_histories(bundle, res.task.hist, mode="backtest", backtest_days=TEST_DAYS,
                                 step=cfg.data.horizon)
        out[shrink] = {**evaluate(scored.forecasts, test_start, list(cfg.data.quantiles)), "point_weight": weight,
                       **trained, "backtest_seconds": round(time.perf_counter() - t1, 1),
                       "vs_baselines": baselines.compare(scored.forecasts, res.task.hist)}
    return out


def met(f: dict) -> bool:
    """The target: strictly better than persistence (a weight of 0 is persistence itself, rMAE
    1.000), with a calibrated 80% band."""
    return f["rmae"] < 1.0 and 0.75 <= f.get("coverage_80", np.nan) <= 0.85


def spread(values: list[float], fmt: str = "{:.4f}") -> str:
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))} .. {fmt.format(max(values))})"


def print_vs_baselines(runs: dict, quantiles: list[float]) -> None:
    """One table: the model (each seed, each point_shrink) and both baselines, on the same points."""
    level = band_level(quantiles)
    first = next(iter(runs.values()))["off"]["vs_baselines"]
    rows = []
    label = lambda f: "/".join(f"{v:.1%}" for v in f["below"].values())
    row = lambda name, f: [name, f["rmae"], f"{f['coverage']:.1%}", f"{f['band_width']:.2%}", f["pinball"],
                           f"{f['skill_rw']:+.2%}", f"{f['skill_garch']:+.2%}", f"{f['max_calibration_error']:.1f}",
                           label(f)]
    for seed, r in runs.items():
        for shrink in SHRINKS:
            rows.append(row(f"model (seed {seed}, point_shrink {shrink})", r[shrink]["vs_baselines"]["model"]))
    rows += [row(name, first[m]) for m, name in METHODS.items()]
    print(f"\nAgainst the baselines: {first['points']:,} points ({first['tickers']} tickers) of the "
          f"{first['points_test']:,} in the test period; left out for every method: "
          f"{first['skipped_short_history']:,} (origin with under {first['min_returns']} past daily returns), "
          f"{first['skipped_no_garch_fit']:,} (no GARCH fit yet). GARCH fits: {first['baselines']['garch_fits']:,} "
          f"({first['baselines']['garch_not_converged']} not converged, {first['baselines']['garch_failed']} failed)\n")
    print(table(rows, ["method", "rMAE", f"coverage {level}", "band width", "pinball", "skill vs RW",
                       "skill vs GARCH", "max calib err (pts)",
                       "below " + "/".join(quantile_column(q) for q in quantiles)]))
    print("pinball: mean over points and quantiles of the loss / the price at the origin; skill = 1 - pinball / "
          "the baseline's; band width: (q_hi - q_lo) / the price at the origin; rMAE of the median vs persistence")


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
    val_start, test_start = split_dates(load_histories(data, min_rows=1), a.val_days)
    job = lambda seed: load_job(a.config, [f"data.path={data}", f"data.val_start={val_start}",
                                           f"data.test_start={test_start}", *overrides, f"train.seed={seed}"])
    first = job(a.seeds[0])
    quantiles = list(first.data.quantiles)
    if band_level(quantiles) is None:
        sys.exit(f"forecast_quality compares quantile forecasts: data.quantiles needs 3 or more, got {quantiles}")
    baselines = Baselines(test_start, quantiles, first.data.horizon, first.data.target)
    m = machine()
    print(f"machine: {m['cpus']} cpus (load average {os.getloadavg()[0]:.1f} at start), "
          f"{m['torch_threads']} torch threads, torch {m['torch']}", flush=True)
    runs = {}
    for seed in a.seeds:
        cfg = job(seed)
        print(f"seed {seed}: train before {val_start}, validate {val_start}..{test_start}, test from {test_start}; "
              f"{cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, window {cfg.data.window}, "
              f"horizon {cfg.data.horizon}, {cfg.data.transform}", flush=True)
        runs[seed] = run_seed(cfg, test_start, baselines)

    rows = [[seed, r["val"]["point_weight"], *(r[k]["rmae"] for k in SHRINKS),
             *(r[k].get("coverage_80", np.nan) for k in SHRINKS),
             *(r[k]["tickers_better_than_persistence"] for k in SHRINKS), r["off"]["epochs"],
             r["off"]["train_seconds"]]
            for seed, r in runs.items()]
    print(f"\n{data}: {runs[a.seeds[0]]['off']['points']:,} (ticker, origin, step) points in the test period\n")
    print(table(rows, ["seed", "fitted weight", *(f"{what} {k}" for what in ("rMAE", "coverage", "tickers better")
                                                  for k in SHRINKS), "epochs", "train s"]))
    summary, rows = {}, []
    for shrink in SHRINKS:
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
    print_vs_baselines(runs, quantiles)
    out = write(f"forecast_quality-{a.tag}", {"config": to_dict(job(a.seeds[0])), "seeds": a.seeds, "runs": runs,
                                              "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
