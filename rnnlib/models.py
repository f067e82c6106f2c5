"""Recurrent models: one backbone for rnn | lstm | gru, a character LM and a forecaster.

Models are pure ``nn.Module``s: no device choice, no DDP, no I/O, no config objects.
Builders in ``rnnlib.build`` turn configs into constructor arguments.
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = ("rnn", "lstm", "gru")
_CELL_CLASSES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

# Hidden state: a tensor (layers, B, H) for rnn/gru, a pair of them for lstm.
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class Backbone(nn.Module):
    """A stacked recurrent layer, batch-first. ``init_hidden`` hides LSTM's (h, c) pair."""

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if cell not in _CELL_CLASSES:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        self.cell, self.hidden, self.layers = cell, hidden, layers
        self.rnn = _CELL_CLASSES[cell](
            input_size, hidden, num_layers=layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )

    def init_hidden(self, batch: int) -> Hidden:
        p = next(self.parameters())
        h = p.new_zeros(self.layers, batch, self.hidden)
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        # x: (B, T, input_size) -> out: (B, T, hidden)
        if hidden is None:
            hidden = self.init_hidden(x.shape[0])
        return self.rnn(x, hidden)


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph between truncated-backprop chunks (pytorch/examples' repackage_hidden)."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


class CharLM(nn.Module):
    """Embedding -> recurrent backbone -> Linear over the vocabulary."""

    def __init__(self, vocab_size: int, embed: int = 64, hidden: int = 256, layers: int = 2,
                 dropout: float = 0.0, cell: str = "lstm"):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed)
        self.backbone = Backbone(cell, embed, hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def init_hidden(self, batch: int) -> Hidden:
        return self.backbone.init_hidden(batch)

    def forward(self, ids: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        # ids: (B, T) int64 -> logits: (B, T, V)
        out, hidden = self.backbone(self.embed(ids), hidden)
        return self.head(self.drop(out)), hidden

    @torch.no_grad()
    def step(self, ids: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """One generation step: ids (B,) -> logits (B, V) and the next hidden state."""
        logits, hidden = self(ids[:, None], hidden)
        return logits[:, -1], hidden


HEADS = ("quantiles", "scale")


class Forecaster(nn.Module):
    """Windows of features -> backbone -> ``horizon`` steps x ``n_outputs`` (quantiles or 1 point).

    The head reads the last hidden state; outputs are in the transformed target space
    (see ``rnnlib.features``), one column per quantile in the order they were given.

    ``head="quantiles"`` gives each (step, quantile) its own output. ``head="scale"`` gives each
    step a location and a positive scale, and quantile j is location + scale * z_j, with offsets
    z learned once for all windows and increasing by construction (a cumulative sum of positive
    gaps): the quantiles never cross, and what varies from window to window is the centre and
    the spread of the distribution, not its shape (two numbers a step where the other head
    learns one per quantile).
    """

    def __init__(self, n_features: int, horizon: int = 5, n_outputs: int = 3, hidden: int = 64,
                 layers: int = 2, dropout: float = 0.0, cell: str = "lstm", head: str = "quantiles"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "scale" and n_outputs < 2:
            raise ValueError("head 'scale' needs 2 or more quantiles")
        self.n_features, self.horizon, self.n_outputs, self.head_kind = n_features, horizon, n_outputs, head
        self.backbone = Backbone(cell, n_features, hidden, layers, dropout)
        self.drop = nn.Dropout(dropout)  # before the head; the backbone drops between layers
        self.head = nn.Linear(hidden, horizon * (n_outputs if head == "quantiles" else 2))
        if head == "scale":
            # softplus(0.54) = 1: offsets start 1 apart, centred on 0
            self.offset_gaps = nn.Parameter(torch.full((n_outputs - 1,), 0.5413))

    def offsets(self) -> torch.Tensor:
        """The scale head's quantile offsets z (n_outputs,), increasing, centred on 0."""
        z = torch.cat([self.offset_gaps.new_zeros(1), torch.cumsum(nn.functional.softplus(self.offset_gaps), 0)])
        return z - z.mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, W, F) -> (B, horizon, n_outputs)
        out, _ = self.backbone(x)
        h = self.head(self.drop(out[:, -1]))
        if self.head_kind == "quantiles":
            return h.view(-1, self.horizon, self.n_outputs)
        loc, log_scale = h.view(-1, self.horizon, 2).unbind(-1)
        scale = torch.exp(log_scale.clamp(-20.0, 20.0))
        return loc.unsqueeze(-1) + scale.unsqueeze(-1) * self.offsets()


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. pred (B, H, Q), target (B, H), quantiles (Q,)."""
    diff = target.unsqueeze(-1) - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()
