"""A track record: every published forecast joined with the prices that arrived later.

For each date with a LATEST pointer under a score output (``publish.dated_runs``), the forecasts
of the run it names are matched with the histories (read as ``rnnjobs score`` reads its input):

- a forecast row (ticker, as_of, step) is realized by the step-th trading row after its as_of
  row in the ticker's history, not on the row's ``date`` (which counts business days and knows
  no holidays); with fewer rows after as_of, the point is ``pending`` (counted, not scored);
- a history without the as_of row, but with rows after it, counts from its last row before
  as_of (``origin_shifted``); a ticker with no history row on or before as_of (or no history)
  is ``missing_history``. Every forecast point is scored, pending or missing_history.

Per scored point: ``abs_error`` |forecast - actual| and ``persistence_abs_error``
|last_close - actual| in price units; ``pinball`` (mean over every quantile column, divided by
last_close: scale free) and ``persistence_pinball`` (every quantile at last_close, the same way);
``inside`` (lo <= actual <= hi of the outer band) and ``nominal`` (that band's level).
Aggregates are ratios of sums, never means of ratios: rmae = sum abs_error / sum
persistence_abs_error, pinball_skill = 1 - sum pinball / sum persistence_pinball; NaN where
nothing is scored yet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import publish, storage
from .errors import UserError
from .metrics import pinball_each
from .sources import list_source
from .stocks import load_histories
from .tables import table

QUANTILE = re.compile(r"^q(\d+(?:\.\d+)?)$")  # q05, q50, q97.5
BAND = re.compile(r"^lo_(\d+(?:\.\d+)?)$")  # lo_80 (with hi_80): the band's width in percent
STATUSES = ("scored", "pending", "missing_history")
COUNTS = ["points", *STATUSES, "origin_shifted"]
FIGURES = ["mae", "persistence_mae", "rmae", "coverage", "nominal", "pinball", "persistence_pinball",
           "pinball_skill"]
NEEDED = ("ticker", "as_of", "step", "last_close", "forecast")  # forecast columns a point needs
FRONT = ["as_of", "run", "ticker", "step", "forecast_as_of", "date", "origin", "origin_shifted", "realized", "status",
         "last_close", "actual", "forecast"]  # the points' columns first; then bands, quantiles; then figures


def _widest_band(columns) -> tuple[str, str, float] | None:
    """(lo, hi, width as a fraction) of the widest ``lo_<w>``/``hi_<w>`` pair."""
    bands = [(float(m.group(1)), c) for c in columns if (m := BAND.match(c)) and f"hi_{m.group(1)}" in columns]
    if not bands:
        return None
    width, lo = max(bands)
    return lo, "hi_" + lo[len("lo_"):], width / 100


def quantile_columns(columns) -> list[tuple[str, float]]:
    """(column, level) of a forecast table's quantiles in level order: the ``q<percent>``
    columns; where there are none, the outer band (levels (100 - w) / 200 and 1 minus that)
    with ``forecast`` as the median."""
    qs = sorted(((c, float(m.group(1)) / 100) for c in columns if (m := QUANTILE.match(c))), key=lambda q: q[1])
    if qs:
        return qs
    band = _widest_band(columns)
    if band is None:
        return [("forecast", 0.5)]
    lo, hi, width = band
    return [(lo, (1 - width) / 2), ("forecast", 0.5), (hi, (1 + width) / 2)]


def band_columns(columns) -> tuple[str, str, float] | None:
    """(lo column, hi column, nominal coverage) of a forecast table's outer band: the widest
    ``lo_<w>``/``hi_<w>`` pair, else the outermost quantile columns; None without either."""
    band = _widest_band(columns)
    if band is not None:
        return band
    qs = [q for q in quantile_columns(columns) if q[0] != "forecast"]
    return (qs[0][0], qs[-1][0], qs[-1][1] - qs[0][1]) if len(qs) >= 2 else None


def history_table(series: dict[str, pd.DataFrame], target: str) -> pd.DataFrame:
    """Every row of clean series (``Histories.series``): ticker, date, pos (its row number in the
    ticker's series), rows (the series' length), actual (the ``target`` price)."""
    frames = [pd.DataFrame({"ticker": t, "date": df["date"].to_numpy("datetime64[ns]"), "pos": np.arange(len(df)),
                            "rows": len(df), "actual": df[target].to_numpy(np.float64)})
              for t, df in series.items()]
    if not frames:
        return pd.DataFrame({"ticker": pd.Series(dtype=str), "date": pd.Series(dtype="datetime64[ns]"),
                             "pos": pd.Series(dtype=np.int64), "rows": pd.Series(dtype=np.int64),
                             "actual": pd.Series(dtype=np.float64)})
    return pd.concat(frames, ignore_index=True)


def realize(forecasts: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """``forecasts`` (ticker, as_of, step, ...) with origin (the history row the steps count
    from), origin_shifted, realized (the date of the realizing row), actual and status."""
    f = forecasts.reset_index(drop=True)
    f = f.assign(ticker=f["ticker"].astype(str), as_of=pd.to_datetime(f["as_of"]).astype("datetime64[ns]"),
                 step=f["step"].astype(np.int64))
    history = history.assign(ticker=history["ticker"].astype(str))  # the same dtype on both sides of the joins
    left = f[["ticker", "as_of"]].assign(_i=np.arange(len(f))).sort_values("as_of", kind="stable")
    right = history[["ticker", "date", "pos", "rows"]].rename(columns={"date": "origin"}).sort_values(
        "origin", kind="stable")
    # the last history row on or before as_of, per ticker
    o = pd.merge_asof(left, right, left_on="as_of", right_on="origin", by="ticker",
                      direction="backward").sort_values("_i").reset_index(drop=True)
    has_origin = o["pos"].notna().to_numpy()
    exact = (o["origin"] == o["as_of"]).to_numpy()
    # a later row shows the as_of row is missing for good; without one, it may still arrive
    known = exact | (o["pos"] + 1 < o["rows"]).to_numpy()
    target = (o["pos"] + f["step"]).where(has_origin & known)
    done = pd.merge(pd.DataFrame({"ticker": f["ticker"], "pos": target}),
                    history[["ticker", "pos", "date", "actual"]].astype({"pos": np.float64}),
                    on=["ticker", "pos"], how="left")
    out = f.assign(origin=o["origin"].where(has_origin & known), origin_shifted=has_origin & known & ~exact,
                   realized=done["date"].to_numpy(), actual=done["actual"].to_numpy())
    out["status"] = np.where(~has_origin, "missing_history", np.where(out["actual"].notna(), "scored", "pending"))
    return out


def score_points(forecasts: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Every forecast point realized (``realize``) with its figures; NaN figures unless scored."""
    return point_figures(realize(forecasts, history))


def point_figures(p: pd.DataFrame) -> pd.DataFrame:
    """``p`` (actual, last_close, forecast, the quantile and band columns) with each point's
    figures: abs_error, persistence_abs_error, pinball and persistence_pinball (over every
    quantile, divided by last_close), inside (the outer band) and nominal. Also the promotion
    gate's figures (rnnlib.gate), on backtest points."""
    p = p.copy()
    actual, last = p["actual"].to_numpy(np.float64), p["last_close"].to_numpy(np.float64)
    qs = quantile_columns(p.columns)
    levels = tuple(level for _, level in qs)
    q_pred = p[[c for c, _ in qs]].to_numpy(np.float64)  # (N, Q)
    p["abs_error"] = np.abs(p["forecast"].to_numpy(np.float64) - actual)
    p["persistence_abs_error"] = np.abs(last - actual)
    p["pinball"] = pinball_each(actual, q_pred, levels) / last
    p["persistence_pinball"] = pinball_each(actual, last[:, None], levels) / last
    band = band_columns(p.columns)
    if band:
        lo, hi, nominal = band
        inside = (actual >= p[lo].to_numpy(np.float64)) & (actual <= p[hi].to_numpy(np.float64))
        p["inside"] = np.where(np.isnan(actual), np.nan, inside.astype(np.float64))
        p["nominal"] = nominal
    else:
        p["inside"] = p["nominal"] = np.nan
    return p


def _sums(points: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts and sums of the point figures per group of ``keys``."""
    banded = points["inside"].notna()
    p = points.assign(**{s: points["status"].eq(s) for s in STATUSES}, banded=banded,
                      nominal=points["nominal"].where(banded, 0.0))
    return p.groupby(keys, sort=True).agg(
        points=("status", "size"), **{s: (s, "sum") for s in STATUSES}, origin_shifted=("origin_shifted", "sum"),
        abs_error=("abs_error", "sum"), persistence_abs_error=("persistence_abs_error", "sum"),
        banded=("banded", "sum"), inside=("inside", "sum"), nominal=("nominal", "sum"),
        pinball=("pinball", "sum"), persistence_pinball=("persistence_pinball", "sum"))


def _ratio(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / b, np.nan)


def _figures(s: pd.DataFrame) -> pd.DataFrame:
    """The figures from ``_sums`` (or sums of them: rolling windows): ratios of sums."""
    n = s["scored"]
    return pd.DataFrame({
        "mae": _ratio(s["abs_error"], n), "persistence_mae": _ratio(s["persistence_abs_error"], n),
        "rmae": _ratio(s["abs_error"], s["persistence_abs_error"]),
        "coverage": _ratio(s["inside"], s["banded"]), "nominal": _ratio(s["nominal"], s["banded"]),
        "pinball": _ratio(s["pinball"], n), "persistence_pinball": _ratio(s["persistence_pinball"], n),
        "pinball_skill": 1 - _ratio(s["pinball"], s["persistence_pinball"])}, index=s.index)


def aggregate(points: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts and figures per group of ``keys`` (``[]``: one row over everything)."""
    keyed = points.assign(_all=0) if not keys else points
    s = _sums(keyed, keys or ["_all"])
    if not keys:  # one row even over no points at all
        s = s.reindex(pd.Index([0], name="_all"), fill_value=0)
    extra = {}
    if "as_of" in keys and "ticker" not in keys:
        extra["tickers"] = keyed.groupby(keys, sort=True)["ticker"].nunique()
    if "ticker" in keys and "as_of" not in keys:
        extra["dates"] = keyed.groupby(keys, sort=True)["as_of"].nunique()
    out = pd.concat([pd.DataFrame(extra, index=s.index), s[COUNTS].astype(np.int64), _figures(s)], axis=1)
    return out.reset_index().drop(columns=["_all"], errors="ignore")


def rolling(points: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """as_of and the figures over the ``window`` dates up to each one (ratios of the window's
    sums; a date with nothing scored adds nothing)."""
    s = _sums(points, ["as_of"])
    return _figures(s.rolling(window, min_periods=1).sum()).reset_index()


@dataclass
class Scorecard:
    """Every forecast point of the dated runs (``score_points``: status and figures) and the
    runs left out, with why."""

    output: str
    histories: str
    points: pd.DataFrame
    runs: dict[str, str]  # as_of -> run folder, of the runs scored
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (as_of, run folder, why)
    history_notes: list[str] = field(default_factory=list)  # what reading the histories kept and rejected

    def scored(self) -> pd.DataFrame:
        return self.points[self.points["status"] == "scored"].reset_index(drop=True)

    def by_date(self) -> pd.DataFrame:
        """One row per dated run, also those without forecast rows (their counts 0)."""
        runs = pd.DataFrame({"as_of": pd.to_datetime(list(self.runs)).astype("datetime64[ns]"),
                             "run": [_run_id(r) for r in self.runs.values()]})
        got = aggregate(self.points, ["as_of", "run"])
        out = runs.merge(got, on=["as_of", "run"], how="left")
        ints = ["tickers", *COUNTS]
        out[ints] = out[ints].fillna(0).astype(np.int64)
        return out

    def by_date_step(self) -> pd.DataFrame:
        return aggregate(self.points, ["as_of", "step"])

    def by_ticker(self) -> pd.DataFrame:
        return aggregate(self.points, ["ticker"])

    def overall(self) -> dict:
        row = aggregate(self.points, []).iloc[0]
        return {c: int(row[c]) if c in COUNTS else float(row[c]) for c in row.index}


def _run_id(run_uri: str) -> str:
    return run_uri.rstrip("/").rsplit("/", 1)[-1].removeprefix("run=")


def no_runs(output: str) -> UserError:
    return UserError(f"{output}: no dated score runs; expected as_of=<date>/LATEST pointers to published runs, "
                     "which `rnnjobs score` writes (pass the output= folder of a score config)")


def build(output: str, histories: str, endpoint_url: str | None = None) -> Scorecard:
    """Join the forecasts of every dated forecast run under ``output`` with the histories at
    ``histories`` (any layout or URI ``rnnjobs score`` reads). Backtest runs, and runs whose
    forecasts lack a column a point needs, are skipped with the reason."""
    if not storage.exists(output, endpoint_url):
        raise no_runs(output)
    runs = publish.dated_runs(output, endpoint_url)
    if not runs:
        raise no_runs(output)
    card = Scorecard(output, histories, pd.DataFrame(), {})
    manifests = {}
    for as_of, run in runs.items():
        _, m = publish.read_manifest(run, endpoint_url)
        if m.get("mode") == "forecast":
            manifests[as_of] = m
        else:
            why = f"a {m['mode']} run" if m.get("mode") else "its manifest names no mode"
            card.skipped.append((as_of, run, f"{why}; a track record is of forecast runs"))
    if manifests:
        listing = list_source(histories, endpoint_url=endpoint_url)
    loaded: dict[str, pd.DataFrame] = {}
    frames = []
    for as_of, m in manifests.items():
        run = runs[as_of]
        forecasts = publish.read_kind(run, "forecasts", endpoint_url, manifest=m)
        lacking = [c for c in NEEDED if c not in forecasts.columns]
        if len(forecasts) and lacking:
            card.skipped.append((as_of, run, f"its forecasts lack column(s) {', '.join(lacking)}"))
            continue
        if len(forecasts):
            history = _history(listing, m, loaded, card.history_notes, endpoint_url)
        else:  # nothing scored that day (every series rejected): the date still gets its row
            forecasts, history = pd.DataFrame({c: [] for c in NEEDED}), history_table({}, "close")
        card.runs[as_of] = run
        frames.append(score_points(forecasts, history).rename(columns={"as_of": "forecast_as_of"}).assign(
            as_of=np.datetime64(as_of, "ns"), run=_run_id(run)))
    if not card.runs:
        raise UserError(f"{output}: {len(runs)} dated run(s), none a forecast run to score:\n" +
                        "\n".join(f"  as_of={d}: {why}" for d, _, why in sorted(card.skipped)))
    points = pd.concat(frames, ignore_index=True)
    front = [c for c in FRONT if c in points.columns]
    figures = ["abs_error", "persistence_abs_error", "pinball", "persistence_pinball", "inside", "nominal"]
    card.points = points[front + [c for c in points.columns if c not in front + figures] + figures]
    card.skipped.sort()
    return card


def _history(listing, manifest: dict, loaded: dict, notes: list[str], endpoint_url: str | None) -> pd.DataFrame:
    """The histories read as the run read its input (its target, jump rule and column spellings),
    once per distinct way of reading."""
    model, cfg = manifest.get("model") or {}, manifest.get("config") or {}
    read = dict(needed=(model.get("target", "close"),), max_jump=model.get("max_jump", 1.75),
                columns=cfg.get("columns"), delimiter=cfg.get("delimiter"), date_format=cfg.get("date_format"))
    key = json.dumps(read, sort_keys=True)
    if key not in loaded:
        hist = load_histories(listing, endpoint_url=endpoint_url, **read)
        notes.append(f"histories ({read['needed'][0]}): {hist.summary()}")
        loaded[key] = history_table(hist.series, read["needed"][0])
    return loaded[key]


TABLES = ("by_date", "by_date_step", "by_ticker", "points")


def write(card: Scorecard, out: str, endpoint_url: str | None = None, window: int = 20,
          min_points: int = 20) -> list[str]:
    """Write the tables (one Parquet object each), scorecard.png and report.md under ``out``
    (a folder or s3:// prefix); return their URIs."""
    from .plots import scorecard_png

    tables = {"by_date": card.by_date(), "by_date_step": card.by_date_step(), "by_ticker": card.by_ticker(),
              "points": card.scored()}
    written = []
    for name in TABLES:
        written.append(storage.join(out, f"{name}.parquet"))
        storage.write_bytes(written[-1], publish.parquet_bytes(tables[name]), endpoint_url)
    written.append(storage.join(out, "scorecard.png"))
    daily = tables["by_date"]
    storage.write_bytes(written[-1], scorecard_png(daily, rolling(card.points, window), window,
                                                   f"track record of {storage.redact(card.output)}"), endpoint_url)
    written.append(storage.join(out, "report.md"))
    storage.write_bytes(written[-1], report_md(card, tables, window, min_points).encode(), endpoint_url)
    return written


def _day(ts) -> str:
    return pd.Timestamp(ts).date().isoformat()


def _num(x) -> str:
    return "-" if x != x else f"{x:.4f}"


def _pct(x) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _row(name: str, r) -> list:
    return [name, int(r["points"]), int(r["scored"]), int(r["pending"]), int(r["missing_history"]),
            float(r["rmae"]), _pct(r["coverage"]), _pct(r["nominal"]), float(r["pinball_skill"])]


ROW_HEADERS = ["", "points", "scored", "pending", "missing history", "rMAE", "coverage", "nominal",
               "pinball skill"]


def summary(card: Scorecard) -> list[str]:
    """A few lines for the terminal: dates, points, the overall figures."""
    o, days = card.overall(), list(card.runs)
    lines = [f"{len(days)} dated forecast run(s), {days[0]} .. {days[-1]}"
             + (f"; {len(card.skipped)} skipped" if card.skipped else "")]
    lines += [f"  skipped as_of={d}: {why}" for d, _, why in card.skipped]
    lines.append(f"{o['points']} forecast points: {o['scored']} scored, {o['pending']} pending, "
                 f"{o['missing_history']} missing history, {o['origin_shifted']} with the origin shifted")
    lines.append(f"overall: rMAE {_num(o['rmae'])}, coverage {_pct(o['coverage'])} (nominal {_pct(o['nominal'])}), "
                 f"pinball skill {_num(o['pinball_skill'])}" + (" (nothing scored yet)" if not o["scored"] else ""))
    return lines


def report_md(card: Scorecard, tables: dict, window: int = 20, min_points: int = 20) -> str:
    """report.md: the latest and overall figures, per step, the plot, best and worst tickers,
    what is not scored yet and why."""
    by_date, by_ticker = tables["by_date"], tables["by_ticker"]
    rows = [_row("overall", card.overall()), _row(f"latest date ({_day(by_date['as_of'].iloc[-1])})",
                                                  by_date.iloc[-1])]
    scored_dates = by_date[by_date["scored"] > 0]
    if len(scored_dates) and scored_dates.index[-1] != by_date.index[-1]:
        rows.append(_row(f"latest scored date ({_day(scored_dates['as_of'].iloc[-1])})", scored_dates.iloc[-1]))
    steps = aggregate(card.points, ["step"])
    out = [
        "# Scorecard\n",
        f"Forecasts published under `{storage.redact(card.output)}` ({len(card.runs)} dated run(s), "
        f"{_day(by_date['as_of'].iloc[0])} to {_day(by_date['as_of'].iloc[-1])}) against the histories at "
        f"`{storage.redact(card.histories)}`. Step k of a forecast is realized by the k-th trading row after its "
        "as_of row in the history (holidays are not trading rows); until that row arrives the point is pending.\n",
        table(rows, ROW_HEADERS),
        "\nrMAE: the model's absolute errors summed over the persistence forecast's (the last close); below 1 "
        "beats it. Coverage: the share of realized prices inside the outer band, against the band's nominal "
        "level. Pinball skill: 1 - pinball loss / persistence's pinball loss (every quantile at the last close), "
        "both divided by the last close; above 0 beats persistence.\n",
        "## By step\n",
        table([[int(r["step"]), *_row("", r)[1:]] for _, r in steps.iterrows()], ["step", *ROW_HEADERS[1:]]),
        f"\n![scorecard.png](scorecard.png)\n\n*each date's figures (dots) and over the last {window} dates "
        "(line: ratios of the window's sums)*\n",
    ]
    out += _tickers_md(by_ticker, min_points)
    out += _not_scored_md(card, by_date)
    out.append("## Files\n\n" + "\n".join(f"- `{name}.parquet`" for name in TABLES)
               + "\n\nColumns are described under `rnnjobs scorecard` in the README.\n")
    return "\n".join(out)


def _tickers_md(by_ticker: pd.DataFrame, min_points: int, n: int = 5) -> list[str]:
    ok = by_ticker[(by_ticker["scored"] >= min_points) & by_ticker["rmae"].notna()].sort_values(["rmae", "ticker"])
    head = f"## Tickers\n\n{len(ok)} of {len(by_ticker)} ticker(s) have at least {min_points} scored points"
    if not len(ok):
        return [head + "; none ranked yet.\n"]
    best, worst = ok.head(n), ok.iloc[max(n, len(ok) - n):].iloc[::-1]
    headers = ["ticker", "dates", "scored", "rMAE", "coverage", "nominal", "pinball skill"]

    def fmt(d: pd.DataFrame) -> str:
        return table([[r["ticker"], int(r["dates"]), int(r["scored"]), float(r["rmae"]), _pct(r["coverage"]),
                       _pct(r["nominal"]), float(r["pinball_skill"])] for _, r in d.iterrows()], headers)

    out = [head + ". Best by rMAE:\n", fmt(best)]
    if len(worst):
        out += ["\nWorst by rMAE:\n", fmt(worst)]
    return out


def _not_scored_md(card: Scorecard, by_date: pd.DataFrame) -> list[str]:
    o = card.overall()
    out = ["\n## Not scored\n",
           f"- pending (later prices not in the histories yet): {o['pending']} point(s) over "
           f"{int((by_date['pending'] > 0).sum())} date(s)",
           f"- missing history (no row of the ticker on or before as_of): {o['missing_history']} point(s)"]
    missing = card.points[card.points["status"] == "missing_history"]
    if len(missing):
        tickers = sorted(missing["ticker"].unique())
        out[-1] += f", ticker(s) {', '.join(tickers[:10])}" + (f" and {len(tickers) - 10} more" if len(tickers) > 10
                                                                  else "")
    out.append(f"- origin shifted (the history lacks the as_of row; steps count from the row before): "
               f"{o['origin_shifted']} point(s)")
    out += [f"- skipped as_of={d} ({storage.redact(run)}): {why}" for d, run, why in card.skipped]
    out += [f"- {note}" for note in card.history_notes]
    return out + [""]
