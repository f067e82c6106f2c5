"""What each Ray Train worker trains on: ``task.train_batches(epoch, rank, world)``, the call every
worker makes (rnnlib.fit.run_epoch). For every world size the shards must be disjoint (no window
or character trained twice per epoch), equal (DDP hangs when one worker takes a step more), and
together cover the data (less a remainder smaller than the world). No Ray: the library call."""

from collections import Counter

import numpy as np
import pytest
import torch

from rnnlib.config import job_from_dict
from rnnlib.tasks import make_task

WORLDS = (2, 3, 4, 7)


@pytest.fixture(scope="module")
def forecast_task():
    return make_task(job_from_dict({"data": {"window": 10, "horizon": 5}, "train": {"batch_size": 64, "seed": 3}}))


def windows(batches) -> tuple[list[bytes], list[int]]:
    """Each window by content (input and target), and the size of each batch."""
    keys, sizes = [], []
    for x, y in batches:
        sizes.append(len(x))
        keys += [np.concatenate([a.ravel(), b.ravel()]).tobytes() for a, b in zip(x.numpy(), y.numpy())]
    return keys, sizes


@pytest.mark.parametrize("epoch", [0, 3])
def test_forecast_shards_are_disjoint_equal_and_cover_the_windows(forecast_task, epoch):
    everything, _ = windows(forecast_task.train_batches(epoch, 0, 1))
    n = len(everything)
    assert n > 1000 and len(set(everything)) == n  # one worker: every window once, each identifiable
    for world in WORLDS:
        shards = [windows(forecast_task.train_batches(epoch, rank, world)) for rank in range(world)]
        keys = [Counter(k) for k, _ in shards]
        sizes = [s for _, s in shards]
        assert all(max(c.values()) == 1 for c in keys), f"world {world}: a window twice in one shard"
        union = sum(keys, Counter())
        assert max(union.values()) == 1, f"world {world}: a window in two shards"
        assert set(union) <= set(everything)
        assert len(union) == n - n % world, f"world {world}: {n - len(union)} of {n} windows left out"
        # the same number of equal steps on every worker, and the global batch stays train.batch_size
        assert all(s == sizes[0] for s in sizes), f"world {world}: batch sizes differ across workers"
        assert max(sizes[0]) * world <= 64
    # each epoch drops a different remainder (a fresh shuffle), so no window is left out for good
    other, _ = windows(forecast_task.train_batches(epoch + 1, 0, 4))
    this, _ = windows(forecast_task.train_batches(epoch, 0, 4))
    assert other != this


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
    """A text whose every character is a different code point: a token id names its position."""
    p = tmp_path_factory.mktemp("shards") / "distinct.txt"
    p.write_text("".join(chr(0x4E00 + i) for i in range(3000)), encoding="utf-8")
    return p


def text_task(path, batching: str, batch_size: int = 24):
    return make_task(job_from_dict({"task": "text", "data": {"path": str(path), "seq_len": 16, "batching": batching},
                                    "train": {"batch_size": batch_size, "seed": 1}}))


def test_text_stream_shards_are_disjoint_equal_and_cover_the_text(text_path):
    task = text_task(text_path, "stream")
    train = set(task.train_ids.tolist())
    n = len(train)
    assert n == len(task.train_ids) > 2000  # every training character distinct
    for world in WORLDS:
        bs = 24 // world
        seen, shapes = [], []
        for rank in range(world):
            batches = task.train_batches(0, rank, world)
            shapes.append([tuple(x.shape) for x, _ in batches])
            ids = torch.cat([torch.cat([x.ravel(), y.ravel()]) for x, y in batches]).tolist()
            seen.append(set(ids))
        assert all(s == shapes[0] for s in shapes), f"world {world}: workers step differently"
        assert all(shape[0] == bs for shape in shapes[0])
        for a in range(world):
            assert seen[a] <= train, f"world {world}: rank {a} reads past the training text"
            for b in range(a + 1, world):
                assert not seen[a] & seen[b], f"world {world}: ranks {a} and {b} share characters"
        # left out: under one stream row's worth at the end of each worker's part, and the
        # remainder of the split (< world)
        missed = n - len(set().union(*seen))
        assert missed <= world * (bs + 2), f"world {world}: {missed} of {n} characters never trained on"


def test_text_random_windows_differ_across_workers(text_path):
    """Random batching is not sharded but drawn per worker: workers must not draw the same windows."""
    task = text_task(text_path, "random")
    firsts = [task.train_batches(0, rank, 4)[0][0] for rank in range(4)]
    assert len({tuple(f.ravel().tolist()) for f in firsts}) == 4
    # and the same worker draws the same windows for the same epoch (a replayed epoch after a resume)
    assert torch.equal(task.train_batches(0, 2, 4)[0][0], firsts[2])


# Ray Train with more than one worker: each worker reads its own series (ForecastTask.plan).

def sample_series() -> dict:
    from rnnlib.datasets import sample_stocks_dir
    from rnnlib.stocks import load_histories

    return load_histories(sample_stocks_dir(), needed=("close", "volume")).series


@pytest.fixture(scope="module", params=["per_ticker", "hive_daily"])
def laid_out(request, tmp_path_factory):
    from layouts import write_layout

    root = tmp_path_factory.mktemp(request.param)
    # the last 400 days: a day's file per day in hive_daily (APTV has fewer: a short history)
    write_layout({t: df.tail(400) for t, df in sample_series().items() if t in TICKERS}, root, request.param)
    return request.param, root, make_task(job(root))


TICKERS = ("AAPL", "APTV", "JPM", "KO", "PFE", "WMT", "XOM")  # APTV: a short history


def job(root, **data):
    return job_from_dict({"data": {"path": str(root), "window": 10, "horizon": 5, **data},
                          "train": {"batch_size": 64, "seed": 3}})


def test_the_driver_counts_windows_without_building_them(laid_out):
    task = laid_out[2]
    task.fingerprint(), task.summary(), task.plan(3)
    assert not {"train", "val", "test"} & set(vars(task.data))  # no windows built
    for part in ("train", "val", "test"):  # the counts the plan and the summary use are exact
        w = getattr(task.data, part)
        assert (np.bincount(w.sid, minlength=len(TICKERS)) == task.data.counts[part]).all()


def test_each_worker_reads_only_its_series_and_they_train_equal_steps(laid_out):
    layout, _, full = laid_out
    shards = full.plan(3)
    assert sorted(t for s in shards for t in s.tickers) == sorted(TICKERS)  # every series once
    assert len({s.share for s in shards}) == 1 and all(s.share <= s.windows for s in shards)
    assert shards[0].share == min(s.windows for s in shards)
    tasks = [make_task(full.cfg, s) for s in shards]
    for s, t in zip(shards, tasks):
        assert tuple(t.hist.series) == s.tickers
        if layout == "per_ticker":  # a worker opens only its own files
            assert len(s.entries) == len(s.tickers) and t.hist.rows_elsewhere == 0
        else:  # a day's file holds every ticker: the others' rows are dropped as they are read
            assert len(s.entries) == len(full.hist.listing.entries) and t.hist.rows_elsewhere > 0
        for ticker in s.tickers:  # a shard's series and windows are the full task's
            pd_equal = t.hist.series[ticker].equals(full.hist.series[ticker])
            mine, theirs = t.data.tickers.index(ticker), full.data.tickers.index(ticker)
            assert pd_equal and np.array_equal(t.data.train.x[t.data.train.sid == mine],
                                               full.data.train.x[full.data.train.sid == theirs])
    for epoch in (0, 1):
        batches = [list(t.train_batches(epoch, s.rank, 3)) for s, t in zip(shards, tasks)]
        sizes = [[len(x) for x, _ in b] for b in batches]
        assert all(z == sizes[0] for z in sizes) and sum(sizes[0]) == shards[0].share  # equal steps
        assert max(sizes[0]) == 64 // 3
    # the worker with more windows than the share leaves out a different choice each epoch
    big = max(range(3), key=lambda r: shards[r].windows)
    if shards[big].windows > shards[big].share:
        keys = [{x.numpy().tobytes() for x, _ in tasks[big].train_batches(e, big, 3)} for e in (0, 1)]
        assert keys[0] != keys[1]


def test_the_val_loss_of_the_shards_is_the_val_loss_of_all(laid_out):
    from rnnlib import loop

    full = laid_out[2]
    torch.manual_seed(0)
    model = full.build_model()
    whole = loop.evaluate(model, full.val_batches(), full.eval_loss_fn())
    parts = [(loop.evaluate(model, t.val_batches(), t.eval_loss_fn()), len(t.data.val))
             for t in (make_task(full.cfg, s) for s in full.plan(2))]
    assert abs(sum(v * n for v, n in parts) / sum(n for _, n in parts) - whole) < 1e-5


def test_a_worker_whose_series_changed_says_so(laid_out):
    import dataclasses

    from rnnlib.errors import DataError

    full = laid_out[2]
    shard = dataclasses.replace(full.plan(2)[1], windows=full.plan(2)[1].windows + 1)
    with pytest.raises(DataError, match="worker 1's .* series changed after the run began"):
        make_task(full.cfg, shard)


def test_more_workers_than_series_load_everything_and_share_the_windows(laid_out):
    assert laid_out[2].plan(9) is None and laid_out[2].plan(1) is None  # then train_batches shards the windows
