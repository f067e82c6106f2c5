"""Plain-text reporting helpers shared by the jobs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence


def cell(v) -> str:
    """A value as ``table`` writes it: floats with 4 decimals (4 significant digits when tiny or
    huge, "-" for NaN), anything else as ``str`` does."""
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4f}" if 0.01 <= abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A Markdown table with aligned columns, each value written by ``cell``."""
    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(str(v).ljust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body])


FORECAST_ROWS = [("MAE", "mae"), ("RMSE", "rmse"), ("sMAPE %", "smape"), ("MASE", "mase"),
                 ("directional accuracy", "directional_accuracy")]


def forecast_table(metrics: dict) -> str:
    """Model next to persistence, from ``ForecastTask.final_metrics``."""
    m, p = metrics["model"], metrics["persistence"]
    rows = [(name, m[k], p[k]) for name, k in FORECAST_ROWS]
    if "coverage" in m:
        rows.append((f"{metrics['interval']}% band coverage", m["coverage"], "-"))
    rows.append(("rMAE (model / persistence)", metrics["rmae"], 1.0))
    return table(rows, ["test metric", "model", "persistence"])
