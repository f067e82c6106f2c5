"""How much ASHA saves: the same search run twice in one go, ASHA vs every trial to max_t.

Both runs sample the same trials (same space, same searcher seed) through `rnnjobs tune` on a
local Ray; only the scheduler differs. Reported per run: wall time, total trial-epochs (the
compute spent) and the best validation loss found.

    python bench/tune_efficiency.py [--samples 12] [--epochs 6] [key=value ...]
Target: ASHA spends <= 50% of the full run's trial-epochs and finds a best val loss within 2%.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from common import write  # noqa: E402

from rnnlib.tables import table  # noqa: E402


def search(storage: str, scheduler: str, a, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "jobs.cli", "tune", a.config, f"tune.scheduler={scheduler}",
           f"tune.num_samples={a.samples}", f"train.epochs={a.epochs}", "train.patience=0", f"storage={storage}",
           *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{scheduler} search failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    name = re.search(r"^search (\S+):", r.stdout, re.M).group(1)
    df = pd.read_parquet(io.BytesIO((Path(storage) / name / "results.parquet").read_bytes()))
    return {"scheduler": scheduler, "wall_s": round(wall, 1), "trials": len(df),
            "trial_epochs": int(df["epochs"].sum()), "stopped_early": int((df["stopped"] == "asha").sum()),
            "best_val_loss": float(df["best_val_loss"].min()),
            "best_trial": df.iloc[0].drop(["error"]).to_dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="jobs/configs/forecast-tune.yaml")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [search(f"{tmp}/{s}", s, a, a.overrides) for s in ("asha", "fifo")]
    asha, full = runs
    ratio = asha["trial_epochs"] / full["trial_epochs"]
    gap = asha["best_val_loss"] / full["best_val_loss"] - 1
    rows = [[r["scheduler"], r["trials"], r["trial_epochs"], r["stopped_early"], r["best_val_loss"], r["wall_s"]]
            for r in runs]
    print(table(rows, ["scheduler", "trials", "trial-epochs", "stopped early", "best val loss", "wall s"]))
    ok = ratio <= 0.5 and gap <= 0.02
    print(f"ASHA / full: trial-epochs {ratio:.2f}x, wall {asha['wall_s'] / full['wall_s']:.2f}x, "
          f"best val loss {gap:+.2%}; target (<= 0.50x, within 2%): {'MET' if ok else 'NOT MET'}")
    print(f"best trial (ASHA): {asha['best_trial']}")
    out = write("tune_efficiency", {"samples": a.samples, "epochs": a.epochs, "overrides": a.overrides,
                                    "runs": runs, "epoch_ratio": ratio, "best_gap": gap, "target_met": ok})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
