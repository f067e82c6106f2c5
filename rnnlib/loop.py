"""The training loop: plain PyTorch, device-agnostic, one screen.

A task supplies ``loss(model, batch, state) -> (mean loss, items, state)``; the loop never
branches on the cell type or the task. ``state`` is the hidden state carried between chunks
of a text stream (None elsewhere); it is detached after every step (truncated backprop).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import detach_hidden, pinball_loss

LossFn = Callable[[nn.Module, tuple, object], tuple[torch.Tensor, int, object]]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _to(batch: tuple, device: torch.device | str) -> tuple:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def train_epoch(model: nn.Module, batches: Iterable[tuple], optimizer: torch.optim.Optimizer,
                loss_fn: LossFn, *, clip: float = 1.0, device: torch.device | str = "cpu",
                max_batches: int = 0, deadline: float | None = None) -> float:
    """One pass over ``batches``; returns the item-weighted mean training loss.

    Stops early after ``max_batches`` batches, or once ``time.monotonic()`` passes ``deadline``.
    """
    model.train()
    total, items, state = 0.0, 0, None
    for i, batch in enumerate(batches):
        if (max_batches and i >= max_batches) or (deadline is not None and time.monotonic() > deadline):
            break
        loss, n, state = loss_fn(model, _to(batch, device), state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        state = detach_hidden(state)
        total += loss.item() * n
        items += n
    return total / max(items, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple], loss_fn: LossFn, *,
             device: torch.device | str = "cpu") -> float:
    """Item-weighted mean loss over ``batches`` without gradients; state carried as in training."""
    model.eval()
    total, items, state = 0.0, 0, None
    for batch in batches:
        loss, n, state = loss_fn(model, _to(batch, device), state)
        total += loss.item() * n
        items += n
    return total / max(items, 1)


def forecast_loss(quantiles: tuple[float, ...]) -> LossFn:
    """Pinball loss over the quantile outputs, or MSE for a point forecaster (no quantiles)."""
    q = torch.tensor(quantiles, dtype=torch.float32) if quantiles else None

    def loss(model, batch, state):
        x, y = batch
        pred = model(x)
        if q is None:
            return F.mse_loss(pred[..., 0], y), len(x), None
        return pinball_loss(pred, y, q.to(pred.device)), len(x), None

    return loss


def text_loss(stateful: bool) -> LossFn:
    """Cross-entropy in nats per character; ``stateful`` carries the hidden state across chunks."""

    def loss(model, batch, state):
        x, y = batch
        if state is not None and state_batch(state) != x.shape[0]:
            state = None  # a short last batch starts fresh
        logits, hidden = model(x, state if stateful else None)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return ce, y.numel(), hidden if stateful else None

    return loss


def state_batch(state) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[1]


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 512,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Forecaster outputs for windows x (N, W, F) -> (N, H, Q) numpy.

    On CPU, batches of a few hundred windows are fastest for small RNNs: their activations
    stay in cache (bench/score_throughput.py: 512 beats 4096 by ~30% for an LSTM 2x64).
    """
    model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    outs = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0,))
