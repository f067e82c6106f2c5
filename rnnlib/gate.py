"""The promotion gate: a candidate forecaster against the current champion and persistence.

All sides are backtested on the same most recent days of the same histories: every origin in the
last ``days`` trading days of every series both models can score, each forecast step; only the
(ticker, origin, step) points both models forecast count, so a model with a longer window or
horizon cannot pick easier points. Figures over those points:

    rmae     sum |forecast - actual| / sum |persistence - actual|   (< 1 beats "tomorrow = today")
    pinball  mean pinball loss over every quantile, divided by the price at the origin (scale free)
    persistence_pinball  the same for persistence (every quantile at the last price)
    coverage share of actuals inside the outer band

The candidate is promoted only if it is not worse than persistence and not worse than the
champion, by rMAE and by pinball loss, each beyond a tolerance (``GateConfig``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from .bundle import Bundle
from .config import GateConfig
from .features import source_columns
from .scorecard import aggregate, point_figures
from .scoring import min_rows_for, score_histories
from .stocks import Histories

KEYS = ["ticker", "origin", "step"]


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    candidate: dict
    champion: dict | None
    persistence: dict
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        from .tables import table

        sides = [("candidate", self.candidate), ("champion", self.champion), ("persistence", self.persistence)]
        return table([[name, f["rmae"], f["pinball"], f["coverage"], f["points"]] for name, f in sides if f],
                     ["", "rMAE", "pinball (scaled)", "band coverage", "points"])


def min_rows(bundles: list[Bundle], days: int) -> int:
    return max(min_rows_for(b, "backtest") for b in bundles) + days


def backtest(bundle: Bundle, hist: Histories, days: int) -> pd.DataFrame:
    """Every origin of the last ``days`` rows of each series, every step: one row per point."""
    return score_histories(bundle, hist, mode="backtest", backtest_days=days, step=1).forecasts


def figures(points: pd.DataFrame) -> tuple[dict, dict]:
    """(the model's figures, persistence's) over backtest points, computed as the scorecard
    computes them on published forecasts (rnnlib.scorecard)."""
    p = point_figures(points.rename(columns={"persistence": "last_close"}))
    total = aggregate(p.assign(status="scored", origin_shifted=False, as_of=p["origin"]), []).iloc[0]
    n = int(total["scored"])
    return ({"points": n, "rmae": float(total["rmae"]), "pinball": float(total["pinball"]),
             "coverage": float(total["coverage"])},
            {"points": n, "rmae": 1.0, "pinball": float(total["persistence_pinball"]), "coverage": float("nan")})


def compare(candidate: Bundle, champion: Bundle | None, hist: Histories, settings: GateConfig) -> Decision:
    """Backtest both on the same points of ``hist`` and decide."""
    cand = backtest(candidate, hist, settings.days)
    if champion is not None:
        champ = backtest(champion, hist, settings.days)
        common = cand[KEYS].merge(champ[KEYS], on=KEYS)
        cand, champ = (df.merge(common, on=KEYS).sort_values(KEYS, ignore_index=True) for df in (cand, champ))
    if cand.empty:
        raise ValueError(f"no backtest points in the last {settings.days} days that both models can forecast")
    c, p = figures(cand)
    ch = figures(champ)[0] if champion is not None else None
    reasons = _worse(c, p, "persistence", settings.persistence_rmae_tolerance,
                     settings.persistence_pinball_tolerance)
    if ch is not None:
        reasons += _worse(c, ch, "the champion", settings.rmae_tolerance, settings.pinball_tolerance)
    return Decision(not reasons, reasons, c, ch, p, asdict(settings))


def _worse(c: dict, other: dict, name: str, rmae_tol: float, pinball_tol: float) -> list[str]:
    out = []
    for key, label, tol, fmt in (("rmae", "rMAE", rmae_tol, ".4f"), ("pinball", "pinball loss", pinball_tol, ".5f")):
        if not c[key] <= other[key] * (1 + tol):  # a NaN is never good enough
            out.append(f"{label} {c[key]:{fmt}} is worse than {name}'s {other[key]:{fmt}}"
                       + (f" beyond the tolerance {tol:g}" if tol else ""))
    return out


def _plain(figs: dict | None) -> dict | None:
    """Figures as plain JSON: NaN (no band) as null."""
    return None if figs is None else {k: (None if isinstance(v, float) and v != v else v) for k, v in figs.items()}


@dataclass
class GateResult:
    decision: Decision
    candidate: int
    champion: int | None
    record: str  # where the decision was written, beside the candidate's registry entry
    moved: bool


def gate(reg, name: str, version: int, histories: str, settings: GateConfig, *, alias: str = "champion",
         promote: bool = True, endpoint_url: str | None = None) -> GateResult:
    """Backtest registry version ``version`` of ``name`` against ``name@alias`` (if set) and
    persistence on the last ``settings.days`` of ``histories``; write the decision beside the
    version; if it passes and ``promote``, move the alias, on condition that it still points at the
    champion compared against (``Registry.promote(expect=...)``)."""
    from .bundle import open_bundle
    from .stocks import load_histories

    current = reg.alias_target(name, alias)
    champion_version = current["version"] if current else None
    candidate = open_bundle(reg.bundle_uri(name, version), task="forecast", endpoint_url=reg.endpoint_url)
    champion = (open_bundle(reg.bundle_uri(name, champion_version), task="forecast", endpoint_url=reg.endpoint_url)
                if champion_version not in (None, version) else None)
    bundles = [b for b in (candidate, champion) if b is not None]
    needed = tuple(sorted({c for b in bundles for c in source_columns(tuple(b.data["columns"]))}))
    hist = load_histories(histories, needed=needed, min_rows=min_rows(bundles, settings.days),
                          max_jump=candidate.data.get("max_jump", 1.75), endpoint_url=endpoint_url)
    decision = compare(candidate, champion, hist, settings)
    record = {"name": name, "candidate": version, "alias": alias, "champion": champion_version,
              "histories": histories, "series": len(hist.series), "promote": decision.promote,
              "reasons": decision.reasons, "figures": {"candidate": _plain(decision.candidate),
                                                       "champion": _plain(decision.champion),
                                                       "persistence": _plain(decision.persistence)},
              "settings": decision.settings}
    uri = reg.note(name, version, "gates", record)
    moved = False
    if decision.promote and promote and champion_version != version:
        than = f"version {champion_version} and persistence" if champion else "persistence"
        _, moved = reg.promote(name, version, alias, expect=champion_version, figures=record["figures"],
                               reason=f"gate: not worse than {than} on the last {settings.days} days of "
                                      f"{len(hist.series)} series")
    return GateResult(decision, version, champion_version, uri, moved)
