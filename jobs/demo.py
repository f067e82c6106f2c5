"""``rnnjobs demo``: the quickstart on bundled real data, in this process (no Ray yet).

1. an LSTM forecaster on the 26 bundled histories, test metrics next to persistence;
2. a GRU char model on tinyshakespeare for about a minute, and a sample.
"""

from __future__ import annotations

import time
from pathlib import Path

from rnnlib.config import load_job
from rnnlib.fit import fit
from rnnlib.report import forecast_table
from rnnlib.sampling import generate

CONFIGS = Path(__file__).parent / "configs"
# Demo-sized runs of the shipped configs: (overrides, overrides with --quick)
FORECAST = (["train.epochs=8"], ["train.epochs=1"])
TEXT = (["train.epochs=6", "train.max_batches=100", "train.patience=0", "model.hidden=256", "train.lr=0.003",
         "model.dropout=0"],
        ["train.epochs=1", "train.max_batches=5", "model.hidden=64"])


def run(out: str = "outputs/demo", quick: bool = False) -> int:
    out = Path(out)
    t0 = time.perf_counter()
    cfg = load_job(CONFIGS / "forecast-train.yaml", FORECAST[quick])
    print(f"== forecaster: {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, window {cfg.data.window}, "
          f"horizon {cfg.data.horizon}, bundled sample")
    res = fit(cfg, out=out / "forecast-model", log=lambda s: print("  " + s))
    print(res.task.hist.summary())
    print(forecast_table(res.metrics))
    print(f"bundle: {res.bundle}\n")

    cfg = load_job(CONFIGS / "text-train.yaml", TEXT[quick])
    print(f"== char model: {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden} on tinyshakespeare")
    res = fit(cfg, out=out / "text-model", log=lambda s: print("  " + s))
    val = res.metrics["val"]
    print(f"val loss {val['nats_per_char']:.3f} nats/char ({val['bits_per_char']:.3f} bits/char); "
          f"bundle: {res.bundle}")
    prompt = "ROMEO:\n"
    print("sample (temperature 0.8):\n" + prompt, end="")
    generate(res.model, res.task.vocab, prompt, 300, temperature=0.8, seed=cfg.train.seed,
             on_text=lambda c: print(c, end="", flush=True))
    print(f"\n\ndemo finished in {time.perf_counter() - t0:.0f}s")
    return 0
