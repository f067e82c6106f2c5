"""Text model quality for a fixed wall-clock budget, and generation speed.

Trains the default text config (jobs/configs/text-train.yaml, bundled tinyshakespeare, 90/10
split) in this process for --budget seconds, evaluating the held-out 10% after every epoch;
then times generation of the same characters at the same temperature two ways: stateful (prime
once, one step per character) vs re-feeding a window of the last 100 characters every step, as
the tutorial does. Published figures of other models on other machines are printed in a table
of their own, with their sources.

    python bench/text_quality.py [--budget 600] [--gen-chars 500] [key=value overrides]
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
PROMPT, TEMPERATURE = "ROMEO:\n", 0.8
NANOGPT = "karpathy/nanoGPT README.md, quick start"
# Published figures on the same file and split (tinyshakespeare, first 90% trains, last 10%
# validates; mean cross-entropy in nats per character), other models on other machines: context,
# not a comparison run here.
ANCHORS = [("nanoGPT baby GPT: 4 layers, 4 heads, 128 wide, context 64, 2,000 iterations", 1.88,
            "a MacBook CPU ('or other cheap computer'), ~3 min", NANOGPT),
           ("nanoGPT train_shakespeare_char: 6 layers, 6 heads, 384 wide, context 256", 1.4697,
            "one A100 GPU, ~3 min", NANOGPT)]
ANCHOR_KEYS = ("model", "val_nats", "machine", "source")


@torch.no_grad()
def refeed(model, vocab, n: int, window: int = 100) -> None:
    """The tutorial's way: every new character re-runs the model over the last ``window``."""
    ids = vocab.encode(PROMPT).tolist()
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-window:]]))
        ids.append(int(sample_next(logits[:, -1], TEMPERATURE, generator=gen)))


def generation_rates(model, vocab, n: int) -> dict:
    """Characters per second of equal work: ``n`` characters after PROMPT at TEMPERATURE (no top-k
    or top-p), stateful (prime once, one step per character) and re-feeding the last 100."""
    return {"stateful": n / _timed(lambda: generate(model, vocab, PROMPT, n, temperature=TEMPERATURE, seed=0)),
            "refeed_100": n / _timed(lambda: refeed(model, vocab, n))}


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
    ap.add_argument("--gen-chars", type=int, default=500, help="characters generated each way (default 500)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.hidden=512")
    args = ap.parse_args()
    cfg = load_job(CONFIG, args.overrides)
    model, task, curve, chars_per_s, train_s = train_for(cfg, args.budget)
    params = sum(p.numel() for p in model.parameters())
    best = min(c["val_nats"] for c in curve)
    rates = generation_rates(model, task.vocab, args.gen_chars)
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
          f"model {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, {params:,} parameters; "
          f"training {chars_per_s:,.0f} chars/s")
    print(table([(f"this model, {args.budget:.0f} s budget, this machine", f"{best:.4f}", f"{best / math.log(2):.4f}",
                  len(curve))], ["measured here", "val nats/char", "bits/char", "epochs (last cut)"]))
    print("\n" + table([(name, f"{v:.2f}", f"{v / math.log(2):.2f}", where, src) for name, v, where, src in ANCHORS],
                       ["published elsewhere (other models and machines)", "val nats/char", "bits/char",
                        "machine, training", "source"]))
    print("\n" + table([("stateful (prime once, carry state)", round(rates["stateful"])),
                        ("re-feed last 100 characters each step", round(rates["refeed_100"])),
                        ("ratio", f"{rates['stateful'] / rates['refeed_100']:.1f}x")],
                       [f"generation: {args.gen_chars} chars at temperature {TEMPERATURE} each", "chars/s"]))
    print("\nsample:\n" + PROMPT + generate(model, task.vocab, PROMPT, 300, temperature=TEMPERATURE, seed=1)[0])
    out = write("text_quality", {"budget_s": args.budget, "train_s": train_s, "params": params,
                                 "train_chars_per_s": chars_per_s,
                                 "config": args.overrides, "curve": curve, "best_val_nats": best,
                                 "generation": {"chars": args.gen_chars, "temperature": TEMPERATURE,
                                                "chars_per_s": rates},
                                 "anchors": [dict(zip(ANCHOR_KEYS, a)) for a in ANCHORS]})
    print(f"\nresults: {out}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
