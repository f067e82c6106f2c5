"""``rnnjobs report RUN [RUN ...]``: report.md with PNG plots for what the jobs wrote.

Each RUN is recognised by what it holds (local folder or s3:// prefix):
  a search   (<storage>/<tune name>, results.parquet): top trials; val loss by cell and window
  a training (<storage>/<run name>, metrics.json + model/): test metrics; loss curves; for a
             forecaster, a backtest over the last days of each series: model vs persistence per
             ticker, and forecasts with their band after the last day for a few tickers
  a score run (<output>/run=<id>, _SUCCESS): counts; its forecasts with the band over the history
  a model    (models://NAME@ALIAS or models://NAME/VERSION, from the registry): the version, its
             recorded metrics, the alias's history; for a forecaster the backtest as for a training
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from rnnlib import publish, storage
from rnnlib.bundle import open_bundle
from rnnlib.config import job_from_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import UserError
from rnnlib.plots import forecast_bands_png, loss_curve_png, search_png, vs_persistence_png
from rnnlib.scoring import band_level, score_histories
from rnnlib.search import plot_keys, searched_keys, top_trials_table
from rnnlib.sources import Listing, list_source
from rnnlib.stocks import load_histories, ticker_from_filename
from rnnlib.tables import table
from rnnlib.tasks import load_stock_data, task_class

BACKTEST_DAYS = 250


class Report:
    """Markdown sections and the PNGs they show, written to one folder."""

    def __init__(self, out: Path):
        self.out, self.parts, self.prefix = out, ["# rnnjobs report\n"], ""
        out.mkdir(parents=True, exist_ok=True)

    def text(self, md: str) -> None:
        self.parts.append(md.rstrip() + "\n")

    def image(self, name: str, png: bytes, caption: str) -> None:
        name = self.prefix + name  # one report may show two runs of a kind
        (self.out / name).write_bytes(png)
        self.parts.append(f"![{name}]({name})\n\n*{caption}*\n")

    def write(self) -> Path:
        path = self.out / "report.md"
        path.write_text("\n".join(self.parts), encoding="utf-8")
        return path


def _kinds(uri: str, endpoint: str | None) -> list[str]:
    """What a folder holds; a search folder also holds its best trial's exported model."""
    if str(uri).startswith("models://"):
        return ["model"]
    kinds = [kind for name, kind in (("results.parquet", "search"), ("metrics.json", "train"),
                                     (publish.SUCCESS, "score")) if storage.exists(storage.join(uri, name), endpoint)]
    if kinds:
        return kinds
    raise UserError(f"{uri}: not a search (results.parquet), a training run (metrics.json) or a published "
                    "score run (_SUCCESS); pass <storage>/<name>, <output>/as_of=<date>/run=<id>, <output> (its "
                    "LATEST run) or models://NAME@ALIAS")


def search_section(rep: Report, uri: str, endpoint: str | None, n_tickers: int, top: int = 5) -> None:
    df = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(uri, "results.parquet"), endpoint)))
    stopped = int((df["stopped"] == "asha").sum())
    rep.text(f"## Search: `{uri}`\n\n{len(df)} trials, {stopped} stopped early by ASHA, "
             f"{int(df['epochs'].sum())} trial-epochs. Top {min(top, len(df))}:\n\n" + top_trials_table(df, top))
    keys = searched_keys(df)
    x, color = plot_keys(keys)
    rep.image("search.png", search_png(df, x, color, Path(uri).name, lines=len(keys) <= 2),
              f"best validation loss per trial by {x}"
              + (f" and {color}" if color else "") + "; hollow: stopped early by ASHA")


def _per_ticker(backtest: pd.DataFrame) -> pd.DataFrame:
    err = (backtest["actual"] - backtest["forecast"]).abs()
    naive = (backtest["actual"] - backtest["persistence"]).abs()
    return (backtest.assign(mae_model=err, mae_persistence=naive).groupby("ticker", as_index=False)
            [["mae_model", "mae_persistence"]].mean())


def _with_band(quantiles: list[float]) -> str:
    level = band_level(quantiles)
    return f", with the {level}% band" if level else ""


def _history(hist, tickers) -> dict:
    return {t: hist.series[t][["date", "close"]] for t in tickers}


def train_section(rep: Report, uri: str, endpoint: str | None, n_tickers: int) -> None:
    metrics = json.loads(storage.read_bytes(storage.join(uri, "metrics.json"), endpoint))
    cfg = job_from_dict(metrics["config"])
    task = task_class(cfg.task)
    rep.text(f"## Training: `{uri}`\n\n{cfg.task}: {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, "
             f"{len(metrics['history'])} epochs, best at epoch {metrics['best_epoch'] + 1}.")
    rep.image("loss.png", loss_curve_png(metrics["history"], Path(uri).name, task.loss_label),
              "train and validation loss by epoch")
    rep.text("Final metrics (held out in training):\n\n" + task.metrics_text(metrics["final"]))
    if task.backtests:
        bundle = open_bundle(storage.join(uri, "model"), task=cfg.task, endpoint_url=endpoint)
        backtest_section(rep, bundle, cfg, endpoint, n_tickers)


def backtest_section(rep: Report, bundle, cfg, endpoint: str | None, n_tickers: int) -> None:
    """A forecaster's backtest against persistence on the data it was trained on, and its forecasts."""
    hist, _ = load_stock_data(cfg.data, endpoint or cfg.endpoint_url)
    held_out = min(len(df) for df in hist.series.values()) * (cfg.data.val_frac + cfg.data.test_frac)
    days = int(min(BACKTEST_DAYS, held_out)) if not cfg.data.test_start else BACKTEST_DAYS
    bt = score_histories(bundle, hist, mode="backtest", backtest_days=days, step=cfg.data.horizon).forecasts
    per = _per_ticker(bt)
    overall = (bt["actual"] - bt["forecast"]).abs().mean() / (bt["actual"] - bt["persistence"]).abs().mean()
    rep.text(f"Backtest over the last {days} trading days of each series (rolling origins every "
             f"{cfg.data.horizon} days, {len(bt)} forecasts): rMAE {overall:.4f}; the model beats persistence "
             f"on {(per['mae_model'] < per['mae_persistence']).sum()} of {len(per)} tickers.")
    rep.image("vs_persistence.png", vs_persistence_png(per, f"model vs persistence per ticker (rMAE {overall:.3f})"),
              "MAE of the model divided by MAE of the last close, per ticker, over the backtest")
    tickers = sorted(hist.series)[:n_tickers]
    fc = score_histories(bundle, hist, mode="forecast").forecasts
    quantiles = list(cfg.data.quantiles)
    rep.image("forecasts.png", forecast_bands_png(_history(hist, tickers), fc, quantiles),
              f"the next {cfg.data.horizon} trading days after the last row{_with_band(quantiles)}, for "
              f"{', '.join(tickers)}")


def model_section(rep: Report, ref: str, endpoint: str | None, n_tickers: int) -> None:
    """A registered version (``models://NAME@ALIAS`` or ``models://NAME/VERSION``): what it is, its
    metrics, the alias's history, and for a forecaster the backtest on the data it was trained on."""
    from rnnlib.registry import Registry, parse_ref, registry_uri

    bundle = open_bundle(ref, endpoint_url=endpoint)
    info, m = bundle.registry, bundle.registry.get("metrics") or {}
    args = bundle.meta["model"]["args"]
    rep.text(f"## Model: `{ref}`\n\nVersion {info['version']} of {info['name']}, registered {info['created']} "
             f"from `{info['source']}`: {bundle.task}, {args.get('cell')} {args.get('layers')}x{args.get('hidden')}, "
             f"weights sha256 `{info['weights_sha256'][:12]}`" + (f", run `{info['run']}`" if info.get("run") else "")
             + ".")
    task = task_class(bundle.task)
    try:
        rep.text("Metrics recorded at registration:\n\n" + task.metrics_text(m))
    except (KeyError, TypeError, ValueError):  # registered by hand, without a run's final metrics
        rep.text("No metrics were recorded at registration.")
    alias = parse_ref(ref).alias
    if alias:
        moves = Registry(registry_uri(), endpoint).alias_history(info["name"], alias)
        rows = [[mv.get("when"), mv.get("version"), "-" if mv.get("previous") is None else mv["previous"],
                 mv.get("reason") or "-", json.dumps(mv.get("figures") or {})] for mv in moves]
        rep.text(f"History of `{info['name']}@{alias}`:\n\n" + table(rows, ["when", "version", "previous", "reason",
                                                                           "figures"]))
    if task.backtests:
        try:
            cfg = job_from_dict(bundle.meta.get("config") or {})
        except UserError as e:
            rep.text(f"No backtest: the bundle's training config does not load here ({str(e).splitlines()[0]}).")
            return
        backtest_section(rep, bundle, cfg, endpoint, n_tickers)


def score_section(rep: Report, uri: str, endpoint: str | None, n_tickers: int) -> None:
    _, m = publish.read_manifest(uri, endpoint)
    c = m["counts"]
    rep.text(f"## Score run: `{uri}`\n\n{m['mode']} as of {m['as_of'] or 'each series’ last row'}, model "
             f"`{m['model']['uri']}`: {c['series_scored']} series scored, {c['series_rejected']} rejected, "
             f"{c['rows_rejected']} rows rejected of {c['rows_in']}, {c['forecast_rows']} forecast rows "
             "(rejects.parquet lists every rejected row and series with its reason).")
    fc = publish.read_kind(uri, "forecasts", endpoint)
    if fc.empty:
        return
    tickers = sorted(fc["ticker"].unique())[:n_tickers]
    listing = list_source(m["input"]["uri"] or str(sample_stocks_dir()), endpoint_url=endpoint)
    mine = [e for e in listing.entries if ticker_from_filename(e.uri) in tickers]
    if mine:  # per-ticker files: read only the tickers shown; other layouts: read all
        listing = Listing(listing.uri, mine)
    hist = load_histories(listing, endpoint_url=endpoint)
    tickers = [t for t in tickers if t in hist.series]
    quantiles = m["model"].get("quantiles", [])
    rep.image("score_forecasts.png", forecast_bands_png(_history(hist, tickers), fc, quantiles),
              f"published forecasts{_with_band(quantiles)} over the recent closes: {', '.join(tickers)}")


def run(runs: list[str], out: str | None, tickers: int, endpoint_url: str | None) -> int:
    remote = storage.is_s3(runs[0]) or runs[0].startswith("models://")
    out_dir = Path(out) if out else Path("outputs/report" if remote else runs[0]) / "report"
    rep = Report(out_dir)
    sections = {"search": search_section, "train": train_section, "score": score_section, "model": model_section}
    # a score output or its LATEST pointer: the run it names
    runs = [uri if uri.startswith("models://") else publish.resolve(uri, endpoint_url) for uri in runs]
    kinds = {uri: _kinds(uri, endpoint_url) for uri in runs}
    if any(k == ["train"] for k in kinds.values()):  # a training run is given: skip the searches' best trials
        kinds = {uri: [k for k in ks if k != "train" or ks == ["train"]] for uri, ks in kinds.items()}
    for i, uri in enumerate(runs):
        rep.prefix = f"{i + 1}-" if len(runs) > 1 else ""
        for kind in kinds[uri]:
            print(f"{kind}: {uri}", flush=True)
            sections[kind](rep, uri, endpoint_url, tickers)
    path = rep.write()
    images = sorted(p.name for p in out_dir.glob("*.png"))
    print(f"report: {path} ({', '.join(images)})")
    return 0
