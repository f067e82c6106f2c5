"""PNG plots with matplotlib's headless backend."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def loss_curve_png(history: list[dict], title: str, ylabel: str = "loss") -> bytes:
    """Train and validation loss by epoch; the best validation epoch is marked."""
    epochs = [h["epoch"] + 1 for h in history]
    val = [h["val_loss"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, val, marker="o", label="validation")
    best = min(range(len(val)), key=val.__getitem__)
    ax.scatter([epochs[best]], [val[best]], s=120, facecolors="none", edgecolors="black",
               label=f"best (epoch {epochs[best]})", zorder=3)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
