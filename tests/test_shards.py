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
