"""rnnjobs scorecard (rnnlib.scorecard): published forecasts joined with the prices that arrived
later. Dated runs are published by hand (publish.write_part, commit, point_latest) over a small
history with a holiday, and every figure is checked against a direct computation written here
with plain loops: step k is the k-th history row after the as_of row, never the forecast's date."""

import io

import numpy as np
import pandas as pd
import pytest
from jobhelpers import FAKE_SECRET, cli

from rnnlib import publish, scorecard, storage

HOLIDAY = "2026-11-26"  # Thanksgiving: a business day with no trading row
DAYS = [d for d in pd.bdate_range("2026-11-16", "2026-12-03") if d != pd.Timestamp(HOLIDAY)]
BBB_GAP = pd.Timestamp("2026-11-24")  # BBB's history lacks this row: its forecasts of that date shift origin
QUANTILES = [0.05, 0.1, 0.5, 0.9, 0.95]  # q05 ... q95, band lo_90 / hi_90
STEPS = 3


def histories() -> dict[str, list[tuple[pd.Timestamp, float]]]:
    rng = np.random.default_rng(13)
    out = {}
    for ticker, start in (("AAA", 100.0), ("BBB", 20.0)):
        days = [d for d in DAYS if not (ticker == "BBB" and d == BBB_GAP)]
        prices = start * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
        out[ticker] = list(zip(days, prices.round(4)))
    return out


def write_histories(uri: str, hist: dict) -> None:
    for ticker, rows in hist.items():
        text = "date,close\n" + "".join(f"{d.date()},{p}\n" for d, p in rows)
        storage.write_bytes(storage.join(uri, f"{ticker}.csv"), text.encode())


def forecasts(hist: dict, as_of: str, tickers: list[str], seed: int, q_columns: bool = True) -> pd.DataFrame:
    """What a forecast run writes: q-columns (or, as before they existed, only forecast and the
    80% band), `date` the business days after as_of (the holiday included)."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in tickers:
        known = [p for d, p in hist.get(t, []) if d <= pd.Timestamp(as_of)]
        last = known[-1] if known else 50.0
        dates = pd.bdate_range(pd.Timestamp(as_of) + pd.offsets.BDay(1), periods=STEPS)
        for step, date in enumerate(dates, 1):
            q = np.sort(last * (1 + rng.normal(0, 0.02 * np.sqrt(step), len(QUANTILES))))
            row = {"ticker": t, "as_of": pd.Timestamp(as_of), "step": step, "date": date, "last_close": last,
                   "forecast": q[2]}
            if q_columns:
                row.update(lo_90=q[0], hi_90=q[-1], q05=q[0], q10=q[1], q50=q[2], q90=q[3], q95=q[4])
            else:
                row.update(lo_80=q[1], hi_80=q[3])
            rows.append(row)
    return pd.DataFrame(rows)


def publish_run(root: str, as_of: str, rid: str, df: pd.DataFrame, mode: str = "forecast") -> None:
    run = publish.dated_run(root, as_of, rid)
    files = [publish.write_part(run, f"forecasts/part-{rid}.parquet", df, "forecasts")]
    manifest = {"mode": mode, "as_of": as_of, "model": {"target": "close", "quantiles": QUANTILES},
                "config": {"columns": {}}, "files": files, "created": f"{as_of}T23:00:00+00:00"}
    assert publish.commit(run, "att", manifest)
    publish.point_latest(root, as_of, rid)


def build_world(root: str, hist_uri: str) -> tuple[dict, dict]:
    """Histories and dated runs; returns the histories and {as_of: (run id, forecasts)} the
    scorecard should use."""
    hist = histories()
    write_histories(hist_uri, hist)
    used = {"2026-11-20": ("r20", forecasts(hist, "2026-11-20", ["AAA", "BBB", "ZZZ"], 1)),
            "2026-11-24": ("new24", forecasts(hist, "2026-11-24", ["AAA", "BBB", "ZZZ"], 2)),
            "2026-12-02": ("r02", forecasts(hist, "2026-12-02", ["AAA", "BBB"], 3, q_columns=False))}
    publish_run(root, "2026-11-20", "r20", used["2026-11-20"][1])
    bt = forecasts(hist, "2026-11-23", ["AAA"], 4).rename(columns={"as_of": "origin"})
    publish_run(root, "2026-11-23", "bt23", bt, mode="backtest")
    # the first run of 11-24 is replaced by a newer one: LATEST moves, the old run is not read
    publish_run(root, "2026-11-24", "old24", forecasts(hist, "2026-11-24", ["AAA", "OLD"], 5))
    publish_run(root, "2026-11-24", "new24", used["2026-11-24"][1])
    publish_run(root, "2026-12-02", "r02", used["2026-12-02"][1])
    return hist, used


def _pinball(actual: float, preds: list[float], levels: list[float]) -> float:
    return sum(max(lv * (actual - q), (lv - 1) * (actual - q)) for q, lv in zip(preds, levels)) / len(levels)


def direct(hist: dict, used: dict) -> pd.DataFrame:
    """Every forecast point by hand: walk the ticker's rows from its as_of row."""
    rows = []
    for day, (rid, df) in used.items():
        for r in df.to_dict("records"):
            series = hist.get(r["ticker"], [])
            before = [i for i, (d, _) in enumerate(series) if d <= r["as_of"]]
            out = {"as_of": pd.Timestamp(day), "run": rid, "ticker": r["ticker"], "step": r["step"],
                   "status": "missing_history", "shifted": False}
            rows.append(out)
            if not before:
                continue
            i = before[-1]
            out["shifted"] = series[i][0] != r["as_of"]
            if i + r["step"] >= len(series):
                out["status"] = "pending"
                continue
            realized, actual = series[i + r["step"]]
            last = r["last_close"]
            if "q05" in r:
                preds, levels, lo, hi, nominal = ([r[c] for c in ("q05", "q10", "q50", "q90", "q95")], QUANTILES,
                                                  r["lo_90"], r["hi_90"], 0.9)
            else:
                preds, levels, lo, hi, nominal = [r["lo_80"], r["forecast"], r["hi_80"]], [0.1, 0.5, 0.9], \
                    r["lo_80"], r["hi_80"], 0.8
            out.update(status="scored", realized=realized, actual=actual, ae=abs(r["forecast"] - actual),
                       pae=abs(last - actual), pb=_pinball(actual, preds, levels) / last,
                       ppb=_pinball(actual, [last] * len(levels), levels) / last, inside=float(lo <= actual <= hi),
                       nominal=nominal)
    return pd.DataFrame(rows)


def expected(points: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Ratios of sums per group, from the direct points."""
    out = []
    for key, g in points.groupby(keys):
        s = g[g["status"] == "scored"]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(points=len(g), scored=len(s), pending=int((g["status"] == "pending").sum()),
                   missing_history=int((g["status"] == "missing_history").sum()),
                   origin_shifted=int(g["shifted"].sum()))
        n = len(s)
        row.update(mae=s["ae"].sum() / n if n else np.nan, persistence_mae=s["pae"].sum() / n if n else np.nan,
                   rmae=s["ae"].sum() / s["pae"].sum() if n else np.nan,
                   coverage=s["inside"].mean() if n else np.nan, nominal=s["nominal"].mean() if n else np.nan,
                   pinball=s["pb"].mean() if n else np.nan, persistence_pinball=s["ppb"].mean() if n else np.nan,
                   pinball_skill=1 - s["pb"].sum() / s["ppb"].sum() if n else np.nan)
        out.append(row)
    return pd.DataFrame(out)


def assert_figures(got: pd.DataFrame, want: pd.DataFrame, keys: list[str]) -> None:
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert got[keys].astype(str).values.tolist() == want[keys].astype(str).values.tolist()
    for c in scorecard.COUNTS:
        assert got[c].tolist() == want[c].tolist(), c
    for c in scorecard.FIGURES:
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-12, err_msg=c)


@pytest.fixture
def world(tmp_path):
    root, hist_uri = str(tmp_path / "forecasts"), str(tmp_path / "hist")
    hist, used = build_world(root, hist_uri)
    return root, hist_uri, hist, used


def test_figures_per_date_step_and_ticker_equal_a_direct_computation(world):
    root, hist_uri, hist, used = world
    card = scorecard.build(root, hist_uri)
    want = direct(hist, used)

    by_date = card.by_date()
    assert [str(d.date()) for d in by_date["as_of"]] == list(used)  # the backtest's date is not among them
    assert by_date["run"].tolist() == [rid for rid, _ in used.values()]  # 11-24: the newer run only
    assert_figures(by_date, expected(want, ["as_of", "run"]), ["as_of", "run"])
    assert_figures(card.by_ticker(), expected(want, ["ticker"]), ["ticker"])
    assert_figures(card.by_date_step(), expected(want, ["as_of", "step"]), ["as_of", "step"])
    overall = card.overall()
    whole = expected(want.assign(all=0), ["all"]).iloc[0]
    for c in scorecard.COUNTS + scorecard.FIGURES:
        assert overall[c] == pytest.approx(whole[c], rel=1e-12), c

    # every forecast point is scored, pending or missing; ratios of sums differ from means of ratios
    assert (by_date["points"] == by_date["scored"] + by_date["pending"] + by_date["missing_history"]).all()
    s = want[want["status"] == "scored"]
    assert overall["rmae"] != pytest.approx((s["ae"] / s["pae"]).mean(), rel=1e-6)
    per = card.by_ticker().set_index("ticker")
    assert per.loc["ZZZ", "missing_history"] == 6 and np.isnan(per.loc["ZZZ", "rmae"])  # NaN, not 0
    assert per.loc["AAA", "dates"] == 3 and "OLD" not in per.index  # the replaced run of 11-24 is not read


def test_counts_pending_holiday_shifted_origin_and_missing_ticker(world):
    root, hist_uri, hist, _ = world
    card = scorecard.build(root, hist_uri)
    by_date = card.by_date().set_index(card.by_date()["as_of"].dt.strftime("%Y-%m-%d"))
    # 12-02: the history ends 12-03, so step 1 is scored and steps 2-3 wait for prices
    assert by_date.loc["2026-12-02", ["points", "scored", "pending", "missing_history"]].tolist() == [6, 2, 4, 0]
    # ZZZ has no history: 3 points on each date it was forecast, counted, never dropped
    assert by_date.loc["2026-11-20", "missing_history"] == 3 and by_date.loc["2026-11-24", "missing_history"] == 3
    assert by_date.loc["2026-11-24", "origin_shifted"] == STEPS and by_date.loc["2026-11-20", "origin_shifted"] == 0
    assert by_date.loc["2026-11-20", "tickers"] == 3

    pts = card.scored().set_index(["as_of", "ticker", "step"]).sort_index()
    closes = {t: dict(rows) for t, rows in hist.items()}
    # AAA from 11-24: step 2 is the row after the holiday (11-27), not the forecast's date (11-26)
    aaa = pts.loc[(pd.Timestamp("2026-11-24"), "AAA", 2)]
    assert aaa["date"] == pd.Timestamp(HOLIDAY) and aaa["realized"] == pd.Timestamp("2026-11-27")
    assert aaa["actual"] == closes["AAA"][pd.Timestamp("2026-11-27")]
    # BBB lacks its 11-24 row: its steps count from 11-23, so step 1 is 11-25
    bbb = pts.loc[(pd.Timestamp("2026-11-24"), "BBB", 1)]
    assert bbb["origin"] == pd.Timestamp("2026-11-23") and bool(bbb["origin_shifted"])
    assert bbb["realized"] == pd.Timestamp("2026-11-25") and bbb["actual"] == closes["BBB"][pd.Timestamp("2026-11-25")]
    assert set(card.scored()["run"]) == {"r20", "new24", "r02"}
    assert [(d, why.split(";")[0]) for d, _, why in card.skipped] == [("2026-11-23", "a backtest run")]


def test_quantile_and_band_columns():
    cols = ["ticker", "forecast", "lo_90", "hi_90", "q97.5", "q05", "q50", "q10", "q90", "qx", "q5a"]
    assert scorecard.quantile_columns(cols) == [("q05", 0.05), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9),
                                                ("q97.5", 0.975)]
    assert scorecard.band_columns(cols) == ("lo_90", "hi_90", 0.9)
    old = ["forecast", "lo_80", "hi_80", "lo_50", "hi_50"]  # no q-columns: the outer band and the median
    assert scorecard.quantile_columns(old) == [("lo_80", pytest.approx(0.1)), ("forecast", 0.5),
                                               ("hi_80", pytest.approx(0.9))]
    assert scorecard.band_columns(old) == ("lo_80", "hi_80", 0.8)
    assert scorecard.band_columns(["forecast", "q10", "q50", "q90"]) == ("q10", "q90", pytest.approx(0.8))
    assert scorecard.band_columns(["forecast"]) is None and scorecard.quantile_columns(["forecast"]) == [
        ("forecast", 0.5)]


def test_nothing_scored_yet_is_nan_not_zero(tmp_path):
    root, hist_uri = str(tmp_path / "f"), str(tmp_path / "h")
    hist = histories()
    write_histories(hist_uri, hist)
    publish_run(root, "2026-12-03", "last", forecasts(hist, "2026-12-03", ["AAA"], 7))
    publish_run(root, "2026-12-01", "none", forecasts(hist, "2026-12-01", ["AAA"], 7).iloc[:0])  # all rejected
    card = scorecard.build(root, hist_uri)
    by_date = card.by_date()
    assert by_date["run"].tolist() == ["none", "last"]  # a date without forecast rows keeps its row
    assert by_date[scorecard.COUNTS].values.tolist() == [[0, 0, 0, 0, 0], [STEPS, 0, STEPS, 0, 0]]
    assert by_date[scorecard.FIGURES].isna().all().all()
    assert card.scored().empty and all(np.isnan(card.overall()[c]) for c in scorecard.FIGURES)
    code, out = cli("scorecard", root, "--histories", hist_uri)
    assert code == 0 and "rMAE -" in out and "nothing scored yet" in out, out


def test_cli_end_to_end_local(world, tmp_path):
    root, hist_uri, hist, used = world
    code, out = cli("scorecard", root, "--histories", hist_uri, "--min-points", "2")
    assert code == 0, out
    dest = tmp_path / "forecasts" / "scorecard"
    assert "skipped as_of=2026-11-23: a backtest run" in out
    assert f"wrote: {dest}/by_date.parquet" in out
    overall = expected(direct(hist, used).assign(all=0), ["all"]).iloc[0]
    assert f"rMAE {overall['rmae']:.4f}" in out and f"pinball skill {overall['pinball_skill']:.4f}" in out
    want = direct(hist, used)["status"].value_counts()
    assert (f"{want['scored']} scored, {want['pending']} pending, {want['missing_history']} missing history"
            in out), out
    assert (dest / "scorecard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_date = pd.read_parquet(dest / "by_date.parquet")
    assert by_date.columns.tolist()[:2] == ["as_of", "run"] and len(by_date) == 3
    points = pd.read_parquet(dest / "points.parquet")
    assert len(points) == want["scored"] and (points["status"] == "scored").all()
    assert points["abs_error"].sum() / points["persistence_abs_error"].sum() == pytest.approx(overall["rmae"])
    report = (dest / "report.md").read_text()
    assert "![scorecard.png](scorecard.png)" in report and "Best by rMAE" in report
    assert "ZZZ" in report and "a backtest run" in report
    for name in ("by_date_step", "by_ticker"):
        assert len(pd.read_parquet(dest / f"{name}.parquet"))


def test_cli_one_date_and_out_elsewhere(tmp_path):
    root, hist_uri, out = str(tmp_path / "f"), str(tmp_path / "h"), str(tmp_path / "card")
    hist = histories()
    write_histories(hist_uri, hist)
    publish_run(root, "2026-11-20", "only", forecasts(hist, "2026-11-20", ["AAA"], 8))
    code, text = cli("scorecard", root, "--histories", hist_uri, "--out", out)
    assert code == 0, text
    assert (tmp_path / "card" / "scorecard.png").read_bytes()[:4] == b"\x89PNG"
    assert "none ranked yet" in (tmp_path / "card" / "report.md").read_text()  # 3 points < --min-points 20


def test_cli_on_s3(moto_s3, tmp_path):
    endpoint, _, s3 = moto_s3
    s3.create_bucket(Bucket="card")
    root, hist_uri = "s3://card/forecasts", "s3://card/histories"
    hist, used = build_world(root, hist_uri)
    code, out = cli("scorecard", root, "--histories", hist_uri, "--endpoint-url", endpoint)
    assert code == 0, out
    assert FAKE_SECRET not in out
    for name in ("by_date.parquet", "by_date_step.parquet", "by_ticker.parquet", "points.parquet", "report.md"):
        assert storage.exists(f"{root}/scorecard/{name}")
    assert storage.read_bytes(f"{root}/scorecard/scorecard.png")[:4] == b"\x89PNG"
    by_date = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{root}/scorecard/by_date.parquet")))
    assert_figures(by_date, expected(direct(hist, used), ["as_of", "run"]), ["as_of", "run"])


def test_no_runs_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "h").mkdir()
    for folder in (empty, tmp_path / "absent"):
        code, out = cli("scorecard", folder, "--histories", tmp_path / "h")
        assert code == 2 and "Traceback" not in out, out
        assert str(folder) in out and "as_of=<date>/LATEST" in out and "rnnjobs score" in out

    root = str(tmp_path / "bt")  # dated runs, but only a backtest: nothing to score
    publish_run(root, "2026-11-23", "bt", forecasts(histories(), "2026-11-23", ["AAA"], 4), mode="backtest")
    broken = forecasts(histories(), "2026-11-24", ["AAA"], 4).drop(columns=["last_close"])
    publish_run(root, "2026-11-24", "broken", broken)  # not what a forecast run writes: named, not guessed
    write_histories(str(tmp_path / "h2"), histories())
    code, out = cli("scorecard", root, "--histories", tmp_path / "h2")
    assert code == 2 and "none a forecast run" in out and "Traceback" not in out, out
    assert "as_of=2026-11-23: a backtest run" in out
    assert "as_of=2026-11-24: its forecasts lack column(s) last_close" in out
