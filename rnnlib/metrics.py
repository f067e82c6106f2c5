"""Forecast and language-model metrics. The persistence baseline is always reported beside
the model: a forecaster that does not beat "tomorrow = today" is worse than doing nothing."""

from __future__ import annotations

import math

import numpy as np


def forecast_metrics(actual: np.ndarray, pred: np.ndarray, last: np.ndarray, scale: np.ndarray,
                     lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> dict:
    """Point-forecast metrics over every (window, step), in price units.

    actual, pred, lo, hi: (N, H) prices; last: (N,) last observed price; scale: (N,) the
    series' MASE denominator (mean absolute one-day change on its train rows).
    """
    err = pred - actual
    abs_err = np.abs(err)
    last2 = last[:, None]
    out = {
        "n": int(actual.size),
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "smape": float(200 * np.mean(abs_err / (np.abs(actual) + np.abs(pred) + 1e-12))),
        "mase": float((abs_err / scale[:, None]).mean()),
        # direction of the move from the last observed price; flat actual moves are skipped
        "directional_accuracy": _direction(actual - last2, pred - last2),
    }
    if lo is not None and hi is not None:
        out["coverage"] = float(((actual >= lo) & (actual <= hi)).mean())
        out["interval_width"] = float((hi - lo).mean())
    return out


def _direction(true_move: np.ndarray, pred_move: np.ndarray) -> float:
    m = true_move != 0
    return float((np.sign(true_move[m]) == np.sign(pred_move[m])).mean()) if m.any() else float("nan")


def persistence(last: np.ndarray, horizon: int) -> np.ndarray:
    """The naive forecast: every future step equals the last observed price. (N,) -> (N, H)."""
    return np.repeat(last[:, None], horizon, axis=1)


def pinball_each(actual: np.ndarray, q_pred: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
    """Pinball loss of each point averaged over the quantiles, in price units: actual (...),
    q_pred (..., Q), or (..., 1) for one value at every quantile; returns actual's shape."""
    q = np.asarray(quantiles)
    diff = actual[..., None] - q_pred  # (..., Q) or (..., 1), broadcast against q below
    return np.maximum(q * diff, (q - 1) * diff).mean(axis=-1)


def pinball(actual: np.ndarray, q_pred: np.ndarray, quantiles: tuple[float, ...],
            per: np.ndarray | None = None) -> float:
    """Mean pinball loss over every (window, step, quantile), in price units, or with ``per`` (N,)
    each window's loss divided by its own price (the last observed one): scale free, so series
    at any price level compare.

    actual (N, H); q_pred (N, H, Q), or (N, H, 1) for one value at every quantile (persistence as
    a degenerate distribution)."""
    loss = pinball_each(actual, q_pred, quantiles)  # (N, H)
    if per is not None:
        loss = loss / per[:, None]
    return float(loss.mean())


def compare_to_persistence(actual, pred, last, scale, lo=None, hi=None) -> dict:
    """Model metrics, persistence metrics and their ratios (rMAE < 1 beats persistence)."""
    model = forecast_metrics(actual, pred, last, scale, lo, hi)
    naive = forecast_metrics(actual, persistence(last, actual.shape[1]), last, scale)
    naive["directional_accuracy"] = float("nan")  # persistence predicts no move at all
    return {"model": model, "persistence": naive,
            "rmae": model["mae"] / naive["mae"] if naive["mae"] else float("nan")}


def text_metrics(nats_per_char: float) -> dict:
    """Cross-entropy as nats and bits per character and perplexity."""
    return {"nats_per_char": nats_per_char, "bits_per_char": nats_per_char / math.log(2),
            "perplexity": math.exp(nats_per_char)}
