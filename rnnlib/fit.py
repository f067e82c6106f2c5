"""Training epochs with early stopping, and a train state that survives restarts.

``fit`` trains in this process. Ray Train workers (jobs/train.py) run the same ``run_epoch``
and persist the same ``TrainState`` in their checkpoints, so a resumed run continues exactly
where the checkpoint left off: batches are seeded by epoch, so a replayed epoch is identical.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import loop
from .bundle import load_bundle, save_bundle
from .config import JobConfig, to_dict
from .device import Precision, choose, place
from .errors import UserError
from .tasks import Task, make_task

STATE_FILE = "train_state.pt"


@dataclass
class TrainState:
    """What a resumed run needs beyond the weights: the next epoch, early-stopping state, history."""

    epoch: int = 0
    best: float = math.inf
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # epochs at which a restarted run resumed

    def record(self, train_loss: float, val_loss: float, seconds: float, train_seconds: float) -> bool:
        """Log an epoch; True if it is the best so far."""
        self.history.append({"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                             "seconds": seconds, "train_seconds": train_seconds})
        self.epoch += 1
        improved = val_loss < self.best
        self.best, self.stale = (val_loss, 0) if improved else (self.best, self.stale + 1)
        return improved

    def reports(self, since: int) -> list[dict]:
        """The metrics of epochs ``since`` onwards (0-based) as ``record`` left them: the epoch
        counted from 1 and the epochs without improvement after it."""
        best, stale, out = math.inf, 0, []
        for i, h in enumerate(self.history):
            best, stale = (h["val_loss"], 0) if h["val_loss"] < best else (best, stale + 1)
            if i >= since:
                out.append({**h, "epoch": i + 1, "stale": stale})
        return out

    def done(self, cfg: JobConfig) -> bool:
        return self.epoch >= cfg.train.epochs or bool(cfg.train.patience and self.stale >= cfg.train.patience)

    def save(self, folder: Path, optimizer: torch.optim.Optimizer) -> None:
        """With the random number generators' state, so that dropout after a resume draws what the
        uninterrupted run would have drawn (every DDP rank is seeded alike and draws alike, so rank
        0's state is every rank's)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save({"optimizer": optimizer.state_dict(), "state": json.dumps(asdict(self)), "rng": rng},
                   folder / STATE_FILE)

    @staticmethod
    def _load(source) -> dict:
        """``source``: a checkpoint folder, or its state file opened for reading (from storage)."""
        f = source / STATE_FILE if isinstance(source, Path) else source
        return torch.load(f, map_location="cpu", weights_only=True)

    @classmethod
    def read(cls, source) -> TrainState:
        return cls(**json.loads(cls._load(source)["state"]))

    @classmethod
    def restore(cls, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
        """Load weights, optimizer, random number generators and state from a checkpoint folder
        written by ``save_checkpoint``."""
        model.load_state_dict(load_bundle(folder).model.state_dict())
        saved = cls._load(folder)
        optimizer.load_state_dict(saved["optimizer"])
        rng = saved.get("rng", {})  # absent in checkpoints written before it was saved
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        return cls(**json.loads(saved["state"]))


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    task: Task, cfg: JobConfig, state: TrainState) -> Path:
    """A checkpoint is a bundle (usable as a model as is) plus the train state."""
    save_bundle(folder, model, task=task.name, model_args=task.model_args(), config=to_dict(cfg),
                metrics={"history": state.history}, **task.bundle_kwargs())
    state.save(folder, optimizer)
    return folder


def make_optimizer(model: torch.nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, task: Task,
              cfg: JobConfig, state: TrainState, *, rank: int = 0, world: int = 1,
              precision: Precision | None = None,
              eval_model: torch.nn.Module | None = None) -> tuple[float, float, float, float]:
    """Train one epoch on this rank's shard, then validate on the full val set, on the device
    the model is on.

    ``eval_model`` is the unwrapped module under DDP (evaluation needs no collectives).
    Returns (train loss of this shard, val loss, total seconds, training seconds).
    """
    start = time.perf_counter()
    t = cfg.train
    train_loss = loop.train_epoch(model, task.train_batches(state.epoch, rank, world), optimizer, task.loss_fn(),
                                  clip=t.clip, precision=precision, max_batches=t.max_batches)
    trained = time.perf_counter()
    val_loss = loop.evaluate(eval_model or model, task.val_batches(), task.eval_loss_fn())
    return train_loss, val_loss, time.perf_counter() - start, trained - start


@dataclass
class FitResult:
    model: torch.nn.Module
    task: Task
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    bundle: Path | None = None


def fit(cfg: JobConfig, *, task: Task | None = None, out: str | Path | None = None,
        log: Callable[[str], None] = print, device: bool | str = "cpu") -> FitResult:
    """Train in this process with early stopping on val loss; keep the best epoch's weights.

    ``device``: as ``rnnlib.device.choose`` takes it (``"cpu"``, ``"cuda"``, ``"auto"``)."""
    loop.seed_everything(cfg.train.seed)
    task = task or make_task(cfg)
    dev = choose(device)
    model = place(task.build_model(), dev)
    opt = make_optimizer(model, cfg)
    precision = Precision(cfg.train.precision, dev)
    state, best_weights = TrainState(), None
    while not state.done(cfg):
        tr, val, secs, train_secs = run_epoch(model, opt, task, cfg, state, precision=precision)
        if state.record(tr, val, secs, train_secs):
            best_weights = copy.deepcopy(model.state_dict())
        log(f"epoch {state.epoch}/{cfg.train.epochs}  train {tr:.4f}  val {val:.4f}  ({secs:.1f}s)")
    if cfg.train.patience and state.stale >= cfg.train.patience and state.epoch < cfg.train.epochs:
        log(f"early stop: no better val loss for {state.stale} epochs")
    if best_weights is None:
        raise UserError(f"no epoch of {state.epoch} gave a finite validation loss (last: {val}); "
                        "lower train.lr or set train.clip, and check the data for extreme values")
    model.load_state_dict(best_weights)
    task.calibrate(model.cpu())
    res = FitResult(model, task, state.history, task.final_metrics(model))
    if out is not None:
        res.bundle = save_bundle(out, model, task=task.name, model_args=task.model_args(),
                                 metrics={"history": res.history, **res.metrics}, config=to_dict(cfg),
                                 **task.bundle_kwargs())
    return res
