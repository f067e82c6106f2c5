"""Text model quality for a fixed wall-clock budget, and generation speed.

Trains the default text config (jobs/configs/text-train.yaml, bundled tinyshakespeare, 90/10
split) in this process for --budget seconds, evaluating the held-out 10% after every epoch;
then times generation: stateful (prime once, one step per character) vs re-feeding a window
of the last 100 characters every step, as the tutorial does.

    python bench/text_quality.py [--budget 600] [key=value overrides]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import machine, write  # noqa: E402

from rnnlib import loop  # noqa: E402
from rnnlib.config import load_job  # noqa: E402
from rnnlib.fit import make_optimizer  # noqa: E402
from rnnlib.sampling import generate, sample_next  # noqa: E402
from rnnlib.tables import table  # noqa: E402
from rnnlib.tasks import TextTask  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "text-train.yaml"
ANCHORS = [("nanoGPT small CPU config (0.8M-param transformer, ~3 min, laptop CPU)", 1.88),
           ("char-rnn 2-layer LSTM 128 (long training)", 1.42),
           ("nanoGPT 10.7M-param transformer (GPU)", 1.47)]


@torch.no_grad()
def refeed_rate(model, vocab, n: int, window: int = 100) -> float:
    """The tutorial's way: every new character re-runs the model over the last ``window``."""
    ids = vocab.encode("ROMEO:\n").tolist()
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-window:]]))
        ids.append(int(sample_next(logits[:, -1], 0.8, generator=gen)))
    return n / (time.perf_counter() - start)


def train_for(cfg, budget: float):
    """Train a text config in this process for ``budget`` wall seconds, validating after each epoch
    (the last one cut at the deadline). Returns (model, task, curve, train chars/s, seconds)."""
    loop.seed_everything(cfg.train.seed)
    task = TextTask(cfg)
    model = task.build_model()
    opt = make_optimizer(model, cfg)
    t0 = time.monotonic()
    deadline, curve, epoch = t0 + budget, [], 0
    chars, secs = 0, 0.0
    while time.monotonic() < deadline:
        batches = task.train_batches(epoch)
        start = time.monotonic()
        loop.train_epoch(model, batches, opt, task.loss_fn(), clip=cfg.train.clip, deadline=deadline)
        if time.monotonic() < deadline:  # throughput from the epochs that finished inside the budget
            chars += sum(x.numel() for x, _ in batches)
            secs += time.monotonic() - start
        val = loop.evaluate(model, task.val_batches(), task.eval_loss_fn())
        epoch += 1
        curve.append({"epoch": epoch, "wall_s": time.monotonic() - t0, "val_nats": val})
        print(f"  epoch {epoch}: {curve[-1]['wall_s']:.0f}s  val {val:.4f} nats/char", flush=True)
    return model, task, curve, chars / secs if secs else float("nan"), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="training wall seconds (default 600)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.hidden=512")
    args = ap.parse_args()
    cfg = load_job(CONFIG, args.overrides)
    model, task, curve, chars_per_s, train_s = train_for(cfg, args.budget)
    params = sum(p.numel() for p in model.parameters())
    best = min(c["val_nats"] for c in curve)
    stateful = 2000 / _timed(lambda: generate(model, task.vocab, "ROMEO:\n", 2000, seed=0))
    refeed = refeed_rate(model, task.vocab, 300)
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
          f"model {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, {params:,} parameters; "
          f"training {chars_per_s:,.0f} chars/s")
    rows = [("this model, " + f"{args.budget:.0f}s budget", f"{best:.4f}", f"{best / math.log(2):.4f}")]
    rows += [(name, f"{v:.2f}", f"{v / math.log(2):.2f}") for name, v in ANCHORS]
    print(table(rows, ["model", "val nats/char", "bits/char"]))
    print(table([("stateful (prime once, carry state)", round(stateful)),
                 ("re-feed last 100 characters each step", round(refeed)),
                 ("ratio", f"{stateful / refeed:.1f}x")], ["generation", "chars/s"]))
    print("\nsample:\n" + "ROMEO:\n" + generate(model, task.vocab, "ROMEO:\n", 300, temperature=0.8, seed=1)[0])
    out = write("text_quality", {"budget_s": args.budget, "train_s": train_s, "params": params,
                                 "train_chars_per_s": chars_per_s,
                                 "config": args.overrides, "curve": curve, "best_val_nats": best,
                                 "generation_chars_per_s": {"stateful": stateful, "refeed_100": refeed}})
    print(f"\nresults: {out}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
