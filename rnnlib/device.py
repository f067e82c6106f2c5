"""The device rule, in one place: choose a device once, place the model there, and let every
tensor follow the model.

- ``choose(want)`` turns what a config asks for into a ``torch.device``. Asking for a GPU
  where none is visible is an error, never a silent fall back to the CPU.
- ``place(model, device)`` moves the model and, on CUDA, makes each RNN's weights one
  contiguous block again (``flatten_parameters``: cuDNN needs it, and ``.to()`` breaks it).
- The loops (``rnnlib.loop``), scoring and sampling never take a device: they move their
  inputs to ``device_of(model)``. A model and its inputs cannot end up apart.
- ``Precision`` is ``train.precision``: autocast to bf16 or fp16 for the forward pass, with a
  gradient scaler for fp16. fp16 needs CUDA (oneDNN has no fp16 LSTM on the CPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")


def choose(want: bool | str) -> torch.device:
    """``True``/``"cuda"``: the GPU (an error if none is visible); ``False``/``"cpu"``: the CPU;
    ``"auto"``: the GPU when one is visible. Any other string is taken as a torch device."""
    if want is True or want == "cuda":
        if not torch.cuda.is_available():
            raise UserError("a GPU was asked for but torch sees none (torch.cuda.is_available() is False); "
                            "run where a GPU is visible, or ask for the CPU (gpu: false / device: cpu)")
        return torch.device("cuda")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want is False:
        return torch.device("cpu")
    return torch.device(want)


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device`` (in place; returned for chaining)."""
    model.to(device)
    if torch.device(device).type == "cuda":
        for m in model.modules():
            if isinstance(m, nn.RNNBase):
                m.flatten_parameters()
    return model


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: its inputs go there."""
    return next(model.parameters()).device


def to_device(batch: tuple, device: torch.device) -> tuple:
    return tuple(t.to(device, non_blocking=True) for t in batch)


class Precision:
    """Autocast and gradient scaling for one training run on one device."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu"):
        check_precision(name, torch.device(device).type == "cuda")
        self.name, self.device_type = name, torch.device(device).type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        # Enabled for fp16 only: bf16 has fp32's range, so its gradients need no scaling.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=name == "fp16")

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None or self.device_type == "meta":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def check_precision(name: str, on_gpu: bool) -> None:
    if name not in PRECISIONS:
        raise UserError(f"train.precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "fp16" and not on_gpu:
        raise UserError("train.precision=fp16 needs a GPU (scaling.gpu=true, or tune.gpus_per_trial > 0); "
                        "on the CPU use bf16 or fp32")
