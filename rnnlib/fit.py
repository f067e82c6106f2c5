"""Train a model in this process: the plain loop with early stopping, then a bundle.

Ray Train workers (jobs/train.py) use the same task and loop functions; this is the
single-process path for the demo, tests and benchmarks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import loop
from .checkpoint import save_bundle
from .config import JobConfig, to_dict
from .tasks import ForecastTask, TextTask, make_task


@dataclass
class FitResult:
    model: torch.nn.Module
    task: ForecastTask | TextTask
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    bundle: Path | None = None


def make_optimizer(model: torch.nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def fit(cfg: JobConfig, *, task: ForecastTask | TextTask | None = None, out: str | Path | None = None,
        log: Callable[[str], None] = print, device: str = "cpu") -> FitResult:
    """Train per ``cfg`` with early stopping on val loss; keep the best epoch's weights."""
    loop.seed_everything(cfg.train.seed)
    task = task or make_task(cfg)
    model = task.build_model().to(device)
    opt = make_optimizer(model, cfg)
    t = cfg.train
    res = FitResult(model, task)
    best, best_state, stale = math.inf, None, 0
    for epoch in range(t.epochs):
        start = time.perf_counter()
        train_loss = loop.train_epoch(model, task.train_batches(epoch), opt, task.loss_fn(), clip=t.clip,
                                      device=device, max_batches=t.max_batches)
        val_loss = loop.evaluate(model, task.val_batches(), task.eval_loss_fn(), device=device)
        res.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "seconds": time.perf_counter() - start})
        log(f"epoch {epoch + 1}/{t.epochs}  train {train_loss:.4f}  val {val_loss:.4f}  "
            f"({res.history[-1]['seconds']:.1f}s)")
        if val_loss < best:
            best, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if t.patience and stale >= t.patience:
                log(f"early stop: no better val loss for {stale} epochs")
                break
    model.load_state_dict(best_state)
    res.metrics = task.final_metrics(model.cpu())
    if out is not None:
        res.bundle = save_bundle(out, model, task=task.task, model_args=task.model_args(),
                                 metrics={"history": res.history, **res.metrics}, config=to_dict(cfg),
                                 **task.bundle_kwargs())
    return res
