"""``rnnjobs generate [CONFIG] [key=value ...] [--model URI --prompt TEXT ...]`` and
``rnnjobs evaluate --model URI [--text FILE]``: sampling and scoring text with a bundle."""

from __future__ import annotations

import sys

from rnnlib import storage
from rnnlib.bundle import open_bundle
from rnnlib.config import GenerateConfig, apply_overrides, read_yaml, section_from_dict
from rnnlib.datasets import tinyshakespeare_path
from rnnlib.device import choose, place
from rnnlib.errors import ConfigError
from rnnlib.sampling import encode_prompt, generate
from rnnlib.tasks import evaluate_text
from rnnlib.text import read_text, split_text

FLAGS = ("model", "prompt", "length", "temperature", "top_k", "top_p", "seed", "samples", "out",
         "drop_unknown", "endpoint_url", "device")


def load_generate_config(config: str | None, overrides: list[str], flags: dict) -> GenerateConfig:
    """YAML (optional) < key=value overrides < --flags; validated all at once."""
    raw = apply_overrides(read_yaml(config) if config else {}, overrides)
    raw.update({k: v for k, v in flags.items() if v is not None})
    cfg = section_from_dict(GenerateConfig, raw, config or "command line")
    if not cfg.model:
        raise ConfigError(["model: required; pass --model PATH_OR_S3_URI (a model/ folder from rnnjobs train)"],
                          config or "command line")
    return cfg


def run(config: str | None, overrides: list[str], flags: dict) -> int:
    cfg = load_generate_config(config, overrides, flags)
    bundle = open_bundle(cfg.model, task="text", endpoint_url=cfg.endpoint_url)
    place(bundle.model, choose(cfg.device))
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)
    # checked (and cleaned, with drop_unknown) before anything is printed
    prompt = bundle.vocab.decode(encode_prompt(bundle.vocab, cfg.prompt, cfg.drop_unknown, warn))
    sys.stdout.write(prompt)
    texts = generate(bundle.model, bundle.vocab, prompt, cfg.length, temperature=cfg.temperature,
                     top_k=cfg.top_k, top_p=cfg.top_p, samples=cfg.samples, seed=cfg.seed,
                     on_text=lambda c: (sys.stdout.write(c), sys.stdout.flush()))
    for i, t in enumerate(texts[1:], start=2):
        sys.stdout.write(f"\n\n--- sample {i} ---\n{prompt}{t}")
    sys.stdout.write("\n")
    if cfg.out:
        sep = "\n\n" + "-" * 40 + "\n\n"
        storage.write_bytes(cfg.out, sep.join(prompt + t for t in texts).encode("utf-8"), cfg.endpoint_url)
        print(f"wrote {len(texts)} sample(s) to {cfg.out}", file=sys.stderr)
    return 0


def run_evaluate(model: str, text: str | None, seq_len: int | None, endpoint_url: str | None,
                 device: str = "auto") -> int:
    bundle = open_bundle(model, task="text", endpoint_url=endpoint_url)
    place(bundle.model, choose(device))
    data = bundle.meta.get("config", {}).get("data", {})
    seq_len = seq_len or int(bundle.data.get("seq_len", 128))
    if text:
        ids, what = bundle.vocab.encode(read_text(text)), text
    else:
        corpus = data.get("path") or tinyshakespeare_path()
        ids = split_text(bundle.vocab.encode(read_text(corpus)), float(bundle.data.get("val_frac", 0.1)))[1]
        what = f"held-out split of {corpus}"
    m = evaluate_text(bundle.model, ids, seq_len)
    print(f"{what}: {m['characters']} characters\n"
          f"loss {m['nats_per_char']:.4f} nats/char, {m['bits_per_char']:.4f} bits/char, "
          f"perplexity {m['perplexity']:.3f}")
    return 0
