"""Character-level text data: a Vocab over Unicode code points, splits and batching."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .sources import read_text_files

UNK = "\ufffd"  # the unknown token, used only when a Vocab is built with unknown="token"


class Vocab:
    """Code points <-> ids. Built from text; CJK corpora give thousands of entries.

    ``unknown="error"``: encoding a character outside the vocabulary raises, naming it.
    ``unknown="token"``: such characters map to the U+FFFD token (id 0).
    """

    def __init__(self, chars: list[str], unknown: str = "error"):
        if unknown not in ("error", "token"):
            raise ValueError(f"unknown must be 'error' or 'token', got {unknown!r}")
        self.unknown = unknown
        self.chars = ([UNK] if unknown == "token" and UNK not in chars else []) + list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._table: np.ndarray | None = None  # code point -> id, built on first encode

    @classmethod
    def from_text(cls, text: str, unknown: str = "error") -> Vocab:
        return cls(sorted(set(text)), unknown)

    def __len__(self) -> int:
        return len(self.chars)

    def missing(self, text: str) -> collections.Counter:
        """Characters of ``text`` outside the vocabulary, with their counts."""
        return collections.Counter(c for c in text if c not in self.index)

    def encode(self, text: str) -> np.ndarray:
        if self._table is None:
            self._table = np.full(0x110000, -1, dtype=np.int32)
            self._table[[ord(c) for c in self.chars]] = np.arange(len(self.chars), dtype=np.int32)
        ids = self._table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
        if (ids < 0).any():
            if self.unknown == "token":
                ids = np.where(ids < 0, self.index[UNK], ids)
            else:
                miss = self.missing(text)
                shown = ", ".join(f"{c!r} (U+{ord(c):04X}, {n}x)" for c, n in miss.most_common(10))
                raise DataError(f"{len(miss)} character(s) not in the vocabulary: {shown}"
                                + (" ..." if len(miss) > 10 else "")
                                + "; remove them, or build the vocabulary with unknown='token'")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars), "unknown": self.unknown}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["chars"]), d["unknown"])

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars and self.unknown == other.unknown

    def __repr__(self) -> str:
        return f"Vocab({len(self)} chars, unknown={self.unknown!r})"


def read_text(path: str | Path, endpoint_url: str | None = None) -> str:
    """Read a UTF-8 corpus: a file, or every ``.txt`` file under a folder or prefix (local path,
    ``file://`` or ``s3://``; files in name order, joined by a newline). Anything else is a
    ``DataError`` naming the file and byte."""
    parts = []
    for uri, data in read_text_files(str(path), endpoint_url):
        try:
            parts.append(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise DataError(f"{uri}: not UTF-8 text ({e.reason} at byte {e.start}); convert it, e.g. "
                            f"iconv -f LATIN1 -t UTF-8") from None
    text = "\n".join(parts)
    if not text.strip("\n"):
        raise DataError(f"{path}: the file is empty" if len(parts) == 1 else f"{path}: all {len(parts)} .txt "
                        "files are empty")
    return text


def split_text(ids: np.ndarray, val_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_frac) for training, the rest for validation: no shuffling across time."""
    cut = int(len(ids) * (1 - val_frac))
    return ids[:cut], ids[cut:]


def stream_batches(ids: np.ndarray, batch_size: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous streams for truncated backprop, hidden state carried between chunks.

    The corpus is cut into ``batch_size`` equal streams, one per batch row::

        a b c d e f g h i j k l m n o p q r    ->   row 0: a b c d e f
                                                    row 1: g h i j k l
                                                    row 2: m n o p q r

    and chunk k holds columns [k*seq_len, (k+1)*seq_len) of every row, so row r of chunk
    k+1 continues row r of chunk k. Targets are the inputs shifted by one character.
    """
    data = torch.from_numpy(np.ascontiguousarray(ids))
    per_row = (len(data) - 1) // batch_size
    if per_row < 2:
        raise DataError(f"text too short: {len(data)} characters for batch_size {batch_size}")
    x = data[: per_row * batch_size].view(batch_size, per_row)
    y = data[1: per_row * batch_size + 1].view(batch_size, per_row)
    return [(x[:, i:i + seq_len], y[:, i:i + seq_len]) for i in range(0, per_row - 1, seq_len)]


def random_windows(ids: np.ndarray, batch_size: int, seq_len: int, n_batches: int,
                   generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Independent windows at random offsets (nanoGPT's get_batch); no state carried."""
    data = torch.from_numpy(np.ascontiguousarray(ids))
    if len(data) <= seq_len + 1:
        raise DataError(f"text too short: {len(data)} characters for seq_len {seq_len}")
    out = []
    for _ in range(n_batches):
        start = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
        rows = start[:, None] + torch.arange(seq_len + 1)
        w = data[rows]
        out.append((w[:, :-1], w[:, 1:]))
    return out

