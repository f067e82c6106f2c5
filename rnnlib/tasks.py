"""Tasks turn a ``JobConfig`` into data, a model, batches, a loss and final metrics.

``Task`` is the interface every task implements; ``TASKS`` maps ``cfg.task`` to the class
(``@register``), and the jobs reach a task only through ``make_task`` / ``task_class``, so a new
task is a class here and a data config in ``rnnlib.config``, with nothing to change in ``jobs/``.

The same task object serves the in-process ``fit`` and each Ray Train worker: batches are
sharded by ``(rank, world)`` so that every worker gets the same number of steps (DDP and
``ray.train.report`` both need that), and the effective batch size stays ``train.batch_size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import pandas as pd
import torch

from . import loop
from .config import ForecastDataConfig, JobConfig, TextDataConfig
from .datasets import sample_stocks_dir, tinyshakespeare_path
from .errors import DataError
from .features import (
    ForecastData,
    SeriesTransform,
    feature_columns,
    fit_shrink,
    make_forecast_data,
    min_rows,
    ordered_forecast,
    point_anchor,
    point_index,
    source_columns,
    windows_to_price,
)
from .metrics import compare_to_persistence, pinball, text_metrics
from .models import CharLM, Forecaster
from .sources import Entry, Listing
from .stocks import Histories, load_histories, source_listing
from .tables import forecast_table
from .text import Vocab, random_windows, read_text, split_text, stream_batches

EVAL_BATCH = 32  # text validation streams: fixed so val loss is comparable across configs


@dataclass(frozen=True)
class Shard:
    """One Ray Train worker's part of the forecast data (``ForecastTask.plan``): whole series, read
    on the worker from the files that hold them, and how many training windows it takes each
    epoch (``share``: the same on every worker, so all take the same number of steps)."""

    rank: int
    tickers: tuple[str, ...]
    entries: tuple[str, ...]  # sources.Entry.to_json() of each file holding rows of these tickers
    windows: int  # training windows of these series, as the driver counted them
    share: int


def load_stock_data(d: ForecastDataConfig, endpoint_url: str | None = None,
                    shard: Shard | None = None) -> tuple[Histories, ForecastData]:
    """List, load, validate and split the histories a forecast config names (a local path or URI),
    or only a shard's series (from its files)."""
    source = d.path or sample_stocks_dir()
    by_date = bool(d.val_start or d.test_start)
    listing = (Listing(str(source), [Entry.from_json(e) for e in shard.entries]) if shard
               else source_listing(source, endpoint_url))
    hist = load_histories(listing, needed=source_columns(feature_columns(d.target, d.features)),
                          columns=d.columns, max_jump=d.max_jump, endpoint_url=endpoint_url,
                          delimiter=d.delimiter, date_format=d.date_format, end=d.end,
                          min_rows=min_rows(d.window, d.horizon, d.val_frac, d.test_frac, by_date),
                          tickers=shard.tickers if shard else None)
    data = make_forecast_data(hist.series, target=d.target, features=d.features, transform=d.transform,
                              window=d.window, horizon=d.horizon, val_frac=d.val_frac,
                              test_frac=d.test_frac, val_start=d.val_start, test_start=d.test_start)
    windows = int(data.counts["train"].sum())
    if shard:  # the driver checked the whole; a worker checks that its part is what the driver saw
        if tuple(data.tickers) != shard.tickers or windows != shard.windows:
            raise DataError(f"{source}: the histories of worker {shard.rank}'s {len(shard.tickers)} series changed "
                            f"after the run began ({len(data.tickers)} series and {windows} training windows now, "
                            f"{shard.windows} windows then); run the same command again to train on the data as "
                            "it is now")
    elif not hist.series:
        raise DataError(f"{source}: no usable series.\n{hist.summary()}")
    elif not windows or not data.counts["val"].sum():
        raise DataError(f"{source}: no training or validation windows for "
                        f"window={d.window}, horizon={d.horizon}; use shorter windows or more history")
    return hist, data


class Task(Protocol):
    """What ``fit``, the Ray Train / Tune epoch loop, export and the jobs' output need of a task.

    Class-level parts (``name``, ``loss_label``, ``backtests``, ``describe_data``,
    ``metrics_text``) work without data, for runs read back from storage."""

    name: ClassVar[str]  # cfg.task and the bundle's ``task``
    loss_label: ClassVar[str]  # what the train/val loss measures, for plots
    backtests: ClassVar[bool]  # forecasts prices that reports backtest against persistence
    cfg: JobConfig

    def model_args(self) -> dict: ...
    def build_model(self) -> torch.nn.Module: ...
    def loss_fn(self) -> Callable: ...
    def eval_loss_fn(self) -> Callable: ...
    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterable[tuple]: ...
    def val_batches(self) -> Iterable[tuple]: ...
    def calibrate(self, model: torch.nn.Module) -> float: ...
    def final_metrics(self, model: torch.nn.Module) -> dict: ...
    def fingerprint(self) -> dict: ...
    def bundle_kwargs(self) -> dict: ...
    def summary(self) -> str: ...  # the data as loaded, for ``check`` and ``train``
    # Ray Train with more than one worker: the driver plans each worker's part of the data (None:
    # every worker loads all of it), each worker loads its ``shard``, and the workers swap what a
    # checkpoint needs of the others' parts before training.
    shard: Shard | None
    def plan(self, world: int) -> list[Shard] | None: ...
    def for_other_shards(self) -> dict: ...
    def from_other_shards(self, others: dict) -> None: ...

    @staticmethod
    def describe_data(fp: dict) -> str: ...  # one line for a ``fingerprint()``

    @staticmethod
    def metrics_text(final: dict) -> str: ...  # ``final_metrics`` for a person


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    return TASKS[name]


def make_task(cfg: JobConfig, shard: Shard | None = None) -> Task:
    """Load the data ``cfg`` names (errors surface here), or a shard's part of it, and build its task."""
    return TASKS[cfg.task](cfg, shard)


def _shard(n: int, rank: int, world: int, gen: torch.Generator) -> torch.Tensor:
    """A shuffled, equal-sized share of n items for this rank (the remainder is left out)."""
    per = n // world
    return torch.randperm(n, generator=gen)[: per * world][rank::world]


@register
class ForecastTask:
    name = "forecast"
    loss_label = "pinball loss (scaled)"
    backtests = True

    def __init__(self, cfg: JobConfig, shard: Shard | None = None):
        assert isinstance(cfg.data, ForecastDataConfig)
        self.cfg, self.d, self.shard = cfg, cfg.data, shard
        self.hist, self.data = load_stock_data(cfg.data, cfg.endpoint_url, shard)
        self.quantiles = tuple(self.d.quantiles)
        self.point_weight = 1.0  # the model alone until calibrate() fits the blend with persistence
        self.transforms_elsewhere: dict[str, dict] = {}  # other shards' (from_other_shards), for checkpoints

    def plan(self, world: int) -> list[Shard] | None:
        """Whole series for each of ``world`` workers, balanced by training windows (largest first,
        each to the least loaded worker), with the files each worker reads. None for one worker, or
        for fewer series than workers (a few long histories on many GPUs): then every worker loads
        them all and trains on its share of the windows."""
        counts, tickers = self.data.counts["train"], self.data.tickers
        if world < 2 or (counts > 0).sum() < world:
            return None
        groups, loads = [[] for _ in range(world)], np.zeros(world, dtype=np.int64)
        for i in np.argsort(-counts, kind="stable"):
            r = int(np.argmin(loads))
            groups[r].append(i)
            loads[r] += counts[i]
        entries = self.hist.listing.entries
        return [Shard(r, tuple(tickers[i] for i in sorted(g)),
                      tuple(entries[f].to_json() for f in np.unique(np.concatenate(
                          [self.hist.files_of[tickers[i]] for i in g]))),
                      int(loads[r]), int(loads.min())) for r, g in enumerate(groups)]

    def for_other_shards(self) -> dict[str, dict]:
        """This shard's series transforms: a checkpoint saved by any worker holds every series'."""
        return {t: tf.to_dict() for t, tf in zip(self.data.tickers, self.data.transforms)}

    def from_other_shards(self, others: dict[str, dict]) -> None:
        self.transforms_elsewhere = {t: v for t, v in others.items() if t not in set(self.data.tickers)}

    def model_args(self) -> dict:
        m = self.cfg.model
        return dict(n_features=self.data.n_features, horizon=self.d.horizon,
                    n_outputs=max(1, len(self.quantiles)), hidden=m.hidden, layers=m.layers,
                    dropout=m.dropout, cell=m.cell, head=m.head)

    def build_model(self) -> Forecaster:
        return Forecaster(**self.model_args())

    def loss_fn(self):
        return loop.forecast_loss(self.quantiles)

    eval_loss_fn = loss_fn

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple]:
        """This rank's batches of an epoch: a shuffled, equal part of all windows, or of a shard's
        own (``share`` of them, a fresh choice each epoch)."""
        w = self.data.train
        seed = self.cfg.train.seed * 100_003 + epoch
        if self.shard is None:
            idx = _shard(len(w), rank, world, torch.Generator().manual_seed(seed))
        else:
            idx = torch.randperm(len(w), generator=torch.Generator().manual_seed(seed * 1009 + rank))[:self.shard.share]
        bs = max(1, self.cfg.train.batch_size // world)
        x, y = torch.from_numpy(w.x), torch.from_numpy(w.y)
        for i in range(0, len(idx), bs):
            j = idx[i:i + bs]
            yield x[j], y[j]

    def val_batches(self) -> Iterator[tuple]:
        w = self.data.val
        for i in range(0, len(w), 4096):
            yield torch.from_numpy(w.x[i:i + 4096]), torch.from_numpy(w.y[i:i + 4096])

    def point_index(self) -> int:
        return point_index(self.quantiles)

    @property
    def point_centre(self) -> str:
        """What the median is blended with (``features.CENTRES``)."""
        return "drift" if self.d.point_shrink == "drift" else "persistence"

    def _anchor(self, w, centre: str) -> np.ndarray:
        """``point_anchor`` of each window, from its own series."""
        if centre == "persistence":
            return w.last
        out = np.empty((len(w), self.d.horizon))
        for sid in np.unique(w.sid):
            m = w.sid == sid
            price = self.hist.series[self.data.tickers[sid]][self.d.target].to_numpy(float)
            out[m] = point_anchor(centre, price, w.end[m], self.d.horizon)
        return out

    def _prices(self, model, w, weight: float, centre: str = "persistence") -> tuple[np.ndarray, np.ndarray]:
        """(predicted prices (N, H, Q), ordered and blended with ``centre`` by ``weight`` as
        scoring does, actual prices (N, H))."""
        pred = windows_to_price(loop.predict(model, w.x), w, self.data.transforms)
        return (ordered_forecast(pred, self._anchor(w, centre), weight, self.point_index()),
                windows_to_price(w.y, w, self.data.transforms))

    def calibrate(self, model) -> float:
        """Fit the median's blend weight with persistence on the validation windows
        (``data.point_shrink: val``); 1.0 (the model alone) when off; 0.0 for drift (the median is
        the drift forecast)."""
        w = self.data.val
        if self.d.point_shrink == "drift":
            self.point_weight = 0.0
        elif self.d.point_shrink == "off" or len(w) == 0:
            self.point_weight = 1.0
        else:
            prices, actual = self._prices(model, w, 1.0)
            self.point_weight = fit_shrink(prices[..., self.point_index()], actual, w.last)
        return self.point_weight

    def final_metrics(self, model) -> dict:
        """Metrics in price units on the test windows, next to persistence."""
        w = self.data.test
        if len(w) == 0:
            return {}
        prices, actual = self._prices(model, w, self.point_weight, self.point_centre)
        lo = hi = None
        res = {}
        if len(self.quantiles) >= 3:
            lo, hi = prices[..., 0], prices[..., -1]
            res["interval"] = round((self.quantiles[-1] - self.quantiles[0]) * 100)
            res["pinball"] = pinball(actual, prices, self.quantiles)
        res.update(compare_to_persistence(actual, prices[..., self.point_index()], w.last,
                                          self.data.mase_scale[w.sid], lo, hi))
        res["series"], res["windows"] = len(np.unique(w.sid)), len(w)
        res["point_weight"] = self.point_weight
        return res

    def fingerprint(self) -> dict:
        """What the model learns from, by content: every kept row of every series (the columns
        used), and the dates they span. A file touched or copied without a change keeps it; a new
        day of prices, a corrected row or a new ticker changes it."""
        h = hashlib.sha256()
        for ticker, df in sorted(self.hist.series.items()):
            h.update(ticker.encode() + b"\0")
            h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
        dates = [(df["date"].iloc[0], df["date"].iloc[-1]) for df in self.hist.series.values()]
        return {"sha256": h.hexdigest(), "series": len(self.hist.series), "rows": self.hist.rows_kept,
                "first": str(min(d[0] for d in dates).date()), "last": str(max(d[1] for d in dates).date()),
                "end": self.d.end}

    def summary(self) -> str:
        n = {part: int(c.sum()) for part, c in self.data.counts.items()}
        return (f"{self.hist.summary()}\nwindows: train {n['train']}, val {n['val']}, test {n['test']} "
                f"(window {self.d.window}, horizon {self.d.horizon}, inputs {list(self.data.columns)})")

    @staticmethod
    def describe_data(fp: dict) -> str:
        return (f"{fp['series']} series, {fp['rows']} rows, {fp['first']} to {fp['last']}"
                + (f" (data.end {fp['end']})" if fp.get("end") else "") + f", sha256 {fp['sha256'][:12]}")

    @staticmethod
    def metrics_text(final: dict) -> str:
        return forecast_table(final)

    def bundle_kwargs(self) -> dict:
        d = self.d
        return dict(
            data={"target": d.target, "columns": list(self.data.columns), "transform": d.transform,
                  "window": d.window, "horizon": d.horizon, "quantiles": list(self.quantiles),
                  "max_jump": d.max_jump, "point_weight": self.point_weight, "point_centre": self.point_centre},
            transforms={**{t: SeriesTransform.from_dict(v) for t, v in self.transforms_elsewhere.items()},
                        **dict(zip(self.data.tickers, self.data.transforms))})


@register
class TextTask:
    name = "text"
    loss_label = "nats per character"
    backtests = False

    def __init__(self, cfg: JobConfig, shard: None = None):
        assert isinstance(cfg.data, TextDataConfig) and shard is None
        self.cfg, self.d, self.shard = cfg, cfg.data, None
        path = self.d.path or tinyshakespeare_path()
        text = read_text(path, cfg.endpoint_url)
        self.text_sha256, self.chars = hashlib.sha256(text.encode()).hexdigest(), len(text)
        self.vocab = Vocab.from_text(text, unknown=self.d.unknown)
        self.train_ids, self.val_ids = split_text(self.vocab.encode(text), self.d.val_frac)
        if len(self.val_ids) < EVAL_BATCH * 2 + 1:
            raise DataError(f"{path}: {len(text)} characters leave too little for validation; "
                            "use a longer text or a larger data.val_frac")

    def plan(self, world: int) -> None:
        """None: every worker reads the whole corpus and streams its own part of it."""
        return None

    def for_other_shards(self) -> dict:
        return {}

    def from_other_shards(self, others: dict) -> None:
        pass

    def model_args(self) -> dict:
        m = self.cfg.model
        return dict(vocab_size=len(self.vocab), embed=m.embed, hidden=m.hidden, layers=m.layers,
                    dropout=m.dropout, cell=m.cell)

    def build_model(self) -> CharLM:
        return CharLM(**self.model_args())

    def loss_fn(self):
        return loop.text_loss(stateful=self.d.batching == "stream")

    def eval_loss_fn(self):
        return loop.text_loss(stateful=True)

    def train_batches(self, epoch: int, rank: int = 0, world: int = 1) -> list[tuple]:
        bs, seq = max(1, self.cfg.train.batch_size // world), self.d.seq_len
        if self.d.batching == "stream":
            per = len(self.train_ids) // world  # each worker streams its own contiguous part
            return stream_batches(self.train_ids[rank * per:(rank + 1) * per], bs, seq)
        gen = torch.Generator().manual_seed((self.cfg.train.seed * 100_003 + epoch) * 1009 + rank)
        n = max(1, len(self.train_ids) // (self.cfg.train.batch_size * seq))
        return random_windows(self.train_ids, bs, seq, n, gen)

    def val_batches(self) -> list[tuple]:
        return stream_batches(self.val_ids, EVAL_BATCH, self.d.seq_len)

    def calibrate(self, model) -> float:
        """Nothing to calibrate for a char model (the forecaster's blend with persistence)."""
        return 1.0

    def final_metrics(self, model) -> dict:
        return {"val": evaluate_text(model, self.val_ids, self.d.seq_len), "vocab_size": len(self.vocab)}

    def fingerprint(self) -> dict:
        """The corpus by content (every file a prefix names, in order)."""
        return {"sha256": self.text_sha256, "chars": self.chars}

    def summary(self) -> str:
        return (f"text: {len(self.train_ids) + len(self.val_ids)} characters, vocabulary {len(self.vocab)}; "
                f"train {len(self.train_ids)}, val {len(self.val_ids)}")

    @staticmethod
    def describe_data(fp: dict) -> str:
        return f"{fp['chars']} characters, sha256 {fp['sha256'][:12]}"

    @staticmethod
    def metrics_text(final: dict) -> str:
        v = final["val"]
        return (f"val: {v['nats_per_char']:.4f} nats/char, {v['bits_per_char']:.4f} bits/char, "
                f"perplexity {v['perplexity']:.2f}")

    def bundle_kwargs(self) -> dict:
        return dict(data={"seq_len": self.d.seq_len, "val_frac": self.d.val_frac}, vocab=self.vocab)


def evaluate_text(model: CharLM, ids: np.ndarray, seq_len: int = 128) -> dict:
    """Loss (nats, bits per character, perplexity) of ``model`` on encoded text, hidden state
    carried across the whole text in EVAL_BATCH parallel streams."""
    nats = loop.evaluate(model, stream_batches(ids, EVAL_BATCH, seq_len), loop.text_loss(stateful=True))
    return {**text_metrics(nats), "characters": int(len(ids))}
