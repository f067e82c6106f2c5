"""PNG plots with matplotlib's headless backend."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def loss_curve_png(history: list[dict], title: str, ylabel: str = "loss") -> bytes:
    """Train and validation loss by epoch; the best validation epoch is marked."""
    epochs = [h["epoch"] + 1 for h in history]
    val = [h["val_loss"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, val, marker="o", label="validation")
    best = min(range(len(val)), key=val.__getitem__)
    ax.scatter([epochs[best]], [val[best]], s=120, facecolors="none", edgecolors="black",
               label=f"best (epoch {epochs[best]})", zorder=3)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


CROWDED = 40  # finished trials from which search_figure spreads points and zooms on the best


def search_png(results, x: str, color: str | None, title: str, ylabel: str = "best validation loss",
               lines: bool = False) -> bytes:
    return _png(search_figure(results, x, color, title, ylabel, lines))


def search_figure(results, x: str, color: str | None, title: str, ylabel: str = "best validation loss",
                  lines: bool = False):
    """Each trial's best validation loss against one searched key (``x``), coloured by another.

    ``results`` is the search's results table (a DataFrame with ``best_val_loss``, ``stopped`` and
    the searched keys as columns). Trials stopped early are hollow: their loss is from fewer epochs.
    Every searched value of ``x`` has its tick (also one whose trials all failed), and points sit
    on their value's tick; from ``CROWDED`` finished trials on (a large search), points spread across
    their value's column (shaded) and the loss axis shows the best 90% of trials, the rest counted
    in the title: the region that decides the search is not a blot. ``lines``: join each colour's
    best trial per value; only where the trials of a colour differ in ``x`` alone (nothing else was
    searched), or the line would read as a trend between trials that differ in everything else.
    """
    import numpy as np

    ok = results[results["status"] == "done"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    groups = ok.groupby(color, sort=True) if color else [(None, ok)]
    xs = sorted(results[x].dropna().unique().tolist(), key=str if results[x].dtype == object else None)
    # few distinct values (cells, windows): evenly spaced categories
    categorical = len(xs) <= 12 or not all(isinstance(v, (int, float)) for v in xs)
    pos = {v: i for i, v in enumerate(xs)} if categorical else {v: v for v in xs}
    crowded = categorical and len(ok) >= CROWDED
    spread = np.random.default_rng(0)
    for label, g in groups:
        px = np.array([pos[v] for v in g[x]], dtype=float)
        if crowded:
            px += spread.uniform(-0.35, 0.35, len(px))
        full = (g["stopped"] != "asha").to_numpy()
        line = ax.scatter(px[full], g["best_val_loss"][full], label=f"{color}={label}" if color else None, zorder=3,
                          alpha=0.8)
        ax.scatter(px[~full], g["best_val_loss"][~full], facecolors="none", edgecolors=line.get_facecolor(),
                   zorder=3)
        if lines:
            best = g.groupby(x)["best_val_loss"].min()
            ax.plot([pos[v] for v in best.index], best.to_numpy(), color=line.get_facecolor()[0], alpha=0.5)
    if categorical:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_xlim(-0.5, len(xs) - 0.5)
    elif min(xs) > 0 and max(xs) / min(xs) > 50:  # e.g. a learning rate
        ax.set_xscale("log")
    if crowded:
        for i in range(0, len(xs), 2):
            ax.axvspan(i - 0.5, i + 0.5, color="0.94", zorder=0)
        loss = ok["best_val_loss"].dropna()
        low, top = loss.min(), loss.quantile(0.9)
        ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
        title = f"{title}\n{len(ok)} trials; the worst {int((loss > top).sum())} are above the plot"
    ax.set(xlabel=x, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.scatter([], [], facecolors="none", edgecolors="gray", label="stopped early by ASHA")
    ax.legend(fontsize=8)
    return fig


def forecast_bands_png(history: dict, forecasts, quantiles: list[float], days: int = 120,
                       title: str | None = None) -> bytes:
    """Small multiples, one per ticker: the last ``days`` closes, then the forecast and its band.

    ``history``: ticker -> DataFrame(date, close); ``forecasts``: rows of (ticker, date, forecast
    [, lo_N, hi_N]) from a score run or a model that predicts ``quantiles``. If the history runs
    past the forecast's start (a backtest or an as_of in the past), the actual prices are drawn
    over the forecast too."""
    from .scoring import band_level, band_names

    band, level = band_names(quantiles), band_level(quantiles)
    tickers = list(history)
    cols = 2 if len(tickers) > 1 else 1
    rows = (len(tickers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3 * rows), dpi=100, squeeze=False)
    for ax, t in zip(axes.flat, tickers):
        f = forecasts[forecasts["ticker"] == t].sort_values("date")
        h = history[t]
        start = f["date"].min()
        past = h[h["date"] < start].tail(days)
        ax.plot(past["date"], past["close"], color="black", lw=1, label="close")
        after = h[h["date"] >= start]
        if len(after):
            ax.plot(after["date"], after["close"], color="black", lw=1, ls=":", label="actual")
        if len(past):  # join the forecast to the last observed close
            dates = [past["date"].iloc[-1], *f["date"]]
            ax.plot(dates, [past["close"].iloc[-1], *f["forecast"]], color="tab:blue", lw=1.5, label="forecast")
        if band:
            ax.fill_between(f["date"], f[band[0]], f[band[1]], color="tab:blue", alpha=0.25, label=f"{level}% band")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    for ax in list(axes.flat)[len(tickers):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title or (f"forecasts with their {level}% band" if band else "forecasts"))
    return _png(fig)


def vs_persistence_png(per_ticker, title: str) -> bytes:
    """rMAE per ticker (model MAE / persistence MAE), sorted; left of 1 the model wins."""
    d = per_ticker.assign(rmae=per_ticker["mae_model"] / per_ticker["mae_persistence"]).sort_values("rmae")
    fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.18 * len(d) + 1)), dpi=100)
    colors = ["tab:green" if r < 1 else "tab:red" for r in d["rmae"]]
    ax.barh(d["ticker"], d["rmae"] - 1, left=1, color=colors)
    ax.axvline(1, color="black", lw=1)
    ax.set(xlabel="MAE(model) / MAE(persistence)  (< 1: better than the last close)", title=title)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def scorecard_png(daily, rolled, window: int, title: str = "track record") -> bytes:
    """rMAE, band coverage and pinball skill by as_of date: each date's figure as a dot, the
    figure over the last ``window`` dates as a line, with the line each is judged against
    (rMAE 1, the band's nominal coverage, skill 0). ``daily`` and ``rolled``: frames of as_of and
    those figures (NaN where nothing is scored yet: not drawn)."""
    import matplotlib.dates as mdates

    panels = [("rmae", "rMAE (model / persistence)", 1.0, "persistence"),
              ("coverage", "band coverage", None, "nominal"),
              ("pinball_skill", "pinball skill (1 - model / persistence)", 0.0, "persistence")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 7.5), dpi=100, sharex=True)
    few = len(rolled) < 3  # a line needs two dates; mark the points too
    for ax, (col, label, ref, ref_label) in zip(axes, panels):
        ax.scatter(daily["as_of"], daily[col], s=12, color="tab:gray", alpha=0.6, label="each date", zorder=2)
        ax.plot(rolled["as_of"], rolled[col], color="tab:blue", lw=1.8, marker="o" if few else None,
                label=f"last {window} dates", zorder=3)
        if ref is None:  # coverage: the band's nominal level, which may change with the model
            ax.plot(rolled["as_of"], rolled["nominal"], color="black", lw=1, ls="--", label=ref_label,
                    marker="_" if few else None, markersize=30)
        else:
            ax.axhline(ref, color="black", lw=1, ls="--", label=ref_label)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    import pandas as pd

    first, last = pd.Timestamp(rolled["as_of"].min()), pd.Timestamp(rolled["as_of"].max())
    if last - first < pd.Timedelta(days=14):  # a few dates: a few weeks of axis, not years around them
        axes[-1].set_xlim(first - pd.Timedelta(days=4), last + pd.Timedelta(days=4))
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("as_of (forecast date)")
    axes[0].set_title(title)
    return _png(fig)
