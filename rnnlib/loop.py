"""The training loop: plain PyTorch, device-agnostic, one screen.

A task supplies ``loss(model, batch, state) -> (mean loss, items, state)``; the loop never
branches on the cell type or the task. ``state`` is the hidden state carried between chunks
of a text stream (None elsewhere); it is detached after every step (truncated backprop).
Batches go to the device the model is on (``rnnlib.device``: the caller places the model).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import Precision, device_of, to_device
from .models import detach_hidden, pinball_loss

LossFn = Callable[[nn.Module, tuple, object], tuple[torch.Tensor, int, object]]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_epoch(model: nn.Module, batches: Iterable[tuple], optimizer: torch.optim.Optimizer,
                loss_fn: LossFn, *, clip: float = 1.0, precision: Precision | None = None,
                max_batches: int = 0, deadline: float | None = None) -> float:
    """One pass over ``batches``; returns the item-weighted mean training loss.

    Stops early after ``max_batches`` batches, or once ``time.monotonic()`` passes ``deadline``.
    ``precision`` (default fp32) autocasts the forward pass and scales fp16 gradients.
    """
    model.train()
    device = device_of(model)
    amp = precision or Precision("fp32", device)
    total, items, state = 0.0, 0, None
    for i, batch in enumerate(batches):
        if (max_batches and i >= max_batches) or (deadline is not None and time.monotonic() > deadline):
            break
        with amp.autocast():
            loss, n, state = loss_fn(model, to_device(batch, device), state)
        optimizer.zero_grad(set_to_none=True)
        amp.scaler.scale(loss).backward()
        if clip:
            amp.scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        amp.scaler.step(optimizer)
        amp.scaler.update()
        state = detach_hidden(state)
        total += loss.item() * n
        items += n
    return total / max(items, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple], loss_fn: LossFn) -> float:
    """Item-weighted mean loss over ``batches`` without gradients; state carried as in training."""
    model.eval()
    device = device_of(model)
    total, items, state = 0.0, 0, None
    for batch in batches:
        loss, n, state = loss_fn(model, to_device(batch, device), state)
        total += loss.item() * n
        items += n
    return total / max(items, 1)


def forecast_loss(quantiles: tuple[float, ...]) -> LossFn:
    """Pinball loss over the quantile outputs, or MSE for a point forecaster (no quantiles)."""
    q = torch.tensor(quantiles, dtype=torch.float32) if quantiles else None

    def loss(model, batch, state):
        x, y = batch
        pred = model(x).float()  # the loss in fp32 under autocast
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
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        return ce, y.numel(), hidden if stateful else None

    return loss


def state_batch(state) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[1]


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """Forecaster outputs for windows x (N, W, F) -> (N, H, Q) numpy, run where the model is.

    On CPU, batches of a few hundred windows are fastest for small RNNs: their activations
    stay in cache (bench/score_throughput.py: 512 beats 4096 by ~30% for an LSTM 2x64).
    """
    model.eval()
    device = device_of(model)
    x = torch.as_tensor(x, dtype=torch.float32)
    outs = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0,))
