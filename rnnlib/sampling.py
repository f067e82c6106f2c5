"""Text generation from a CharLM: prime with the prompt once, then carry the hidden state
and feed one character per step, so each new character costs the same (the tutorial
re-feeds a growing window instead). Several samples run as one batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .device import device_of
from .errors import DataError
from .models import CharLM
from .text import Vocab


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) what top-k and nucleus (top-p) sampling exclude. logits (B, V)."""
    logits = logits.clone()
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits[logits < kth] = -torch.inf
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = -torch.inf
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (B,) from logits (B, V); temperature <= 1e-6 is greedy (argmax)."""
    if temperature <= 1e-6:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def encode_prompt(vocab: Vocab, prompt: str, drop_unknown: bool = False,
                  warn: Callable[[str], None] | None = None) -> list[int]:
    """Prompt -> ids. Unknown characters raise (naming them) unless ``drop_unknown``, which
    removes them and reports them through ``warn`` (default: ``warnings.warn``)."""
    miss = vocab.missing(prompt) if vocab.unknown == "error" else {}
    if miss and not drop_unknown:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in sorted(miss))
        raise DataError(f"the prompt has {len(miss)} character(s) the model's vocabulary lacks: {shown}; "
                        "remove them, or drop them with --drop-unknown (drop_unknown: true)")
    if miss:
        (warn or warnings.warn)(f"dropped {sum(miss.values())} prompt character(s) not in the "
                                f"vocabulary: {''.join(sorted(miss))!r}")
        prompt = "".join(c for c in prompt if c not in miss)
    return vocab.encode(prompt).tolist()


@torch.no_grad()
def generate(model: CharLM, vocab: Vocab, prompt: str = "", length: int = 200, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, samples: int = 1, seed: int = 0,
             drop_unknown: bool = False, on_text: Callable[[str], None] | None = None,
             warn: Callable[[str], None] | None = None) -> list[str]:
    """Generate ``samples`` continuations of ``prompt``, ``length`` characters each.

    ``on_text`` receives each new character of the first sample as it is produced.
    An empty prompt starts from a newline if the vocabulary has one, else a seeded random character.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = encode_prompt(vocab, prompt, drop_unknown, warn)
    if not ids:
        ids = [vocab.index["\n"]] if "\n" in vocab.index else [int(torch.randint(len(vocab), (1,), generator=gen))]
    device = device_of(model)  # sampling runs where the model is; the generator stays on the CPU
    primer = torch.tensor(ids, device=device).repeat(samples, 1)  # (B, P)
    logits, hidden = model(primer)
    logits = logits[:, -1]
    out = torch.empty(samples, length, dtype=torch.long)
    for i in range(length):
        nxt = sample_next(logits.float().cpu(), temperature, top_k, top_p, gen)
        out[:, i] = nxt
        if on_text is not None:
            on_text(vocab.chars[int(nxt[0])])
        logits, hidden = model.step(nxt.to(device), hidden)
    return [vocab.decode(row) for row in out.tolist()]
