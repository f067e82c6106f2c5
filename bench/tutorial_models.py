"""The tutorial's two models next to our defaults, on the bundled data, side by side in one run.

text:   jobs/configs/tutorial-text.yaml (Embedding 256 -> GRU 1024, random 100-char sequences)
        vs jobs/configs/text-train.yaml, each trained for the same --budget wall seconds;
        held-out nats per character (lower is better) and training throughput.
stocks: jobs/configs/tutorial-stocks.yaml (MinMax close, 60 days -> next day, MSE)
        vs jobs/configs/forecast-train.yaml, each trained to its own early stop, both with
        data.point_shrink=off (the model alone, no blend with persistence); on the test split:
        MASE and MAE against persistence (the last close) at each model's own horizon, and the
        best validation loss in each model's own loss (MSE vs pinball: not comparable).

    python bench/tutorial_models.py [--budget 240] [--skip-text]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write  # noqa: E402
from text_quality import train_for  # noqa: E402

from rnnlib.config import load_job  # noqa: E402
from rnnlib.fit import fit  # noqa: E402
from rnnlib.tables import table  # noqa: E402

CONFIGS = ROOT / "jobs" / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per text model (default 240)")
    ap.add_argument("--skip-text", action="store_true")
    a = ap.parse_args()
    out = {"budget_s": a.budget}
    if not a.skip_text:
        rows = []
        for name in ("tutorial-text", "text-train"):
            cfg = load_job(CONFIGS / f"{name}.yaml")
            print(f"== {name}: {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, {a.budget:.0f}s", flush=True)
            model, _, curve, cps, _ = train_for(cfg, a.budget)
            params = sum(p.numel() for p in model.parameters())
            best = min(c["val_nats"] for c in curve)
            rows.append([name, f"{params:,}", round(cps), len(curve), best])
            out[name] = {"params": params, "chars_per_s": cps, "curve": curve, "best_val_nats": best}
        print(table(rows, ["config", "parameters", "train chars/s", "epochs (last cut)", "val nats/char"]))
    rows = []
    for name in ("tutorial-stocks", "forecast-train"):
        cfg = load_job(CONFIGS / f"{name}.yaml", ["data.point_shrink='off'"])
        print(f"== {name}: {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, window {cfg.data.window}, "
              f"horizon {cfg.data.horizon}, {cfg.data.transform}, point_shrink {cfg.data.point_shrink}", flush=True)
        res = fit(cfg, log=lambda s: print("  " + s, flush=True))
        m, best = res.metrics, min(h["val_loss"] for h in res.history)
        assert m["point_weight"] == 1.0, m["point_weight"]  # the model alone
        rows.append([name, cfg.data.horizon, best, m["model"]["mase"], m["persistence"]["mase"], m["rmae"],
                     m["model"].get("coverage", float("nan"))])
        out[name] = {"val_loss": best, "epochs": len(res.history), "test": m}
    print(table(rows, ["config", "horizon", "best val loss (own loss)", "MASE", "MASE persistence",
                       "rMAE", "80% coverage"]))
    print("both models alone (data.point_shrink='off': no blend with persistence)")
    print(f"wrote {write('tutorial_models', out)}")


if __name__ == "__main__":
    main()
