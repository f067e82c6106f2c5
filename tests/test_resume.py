"""A run interrupted after an epoch and resumed from the checkpoint it wrote ends where the same run
uninterrupted ends: same weights, same history.

Resuming is the job's epoch loop (``jobs.train.train_loop``, what every Ray Train worker and Tune
process trial runs; ``rnnlib.fit.fit`` does not resume), driven here in this process as Ray drives
it: ``report(metrics, folder)`` after each epoch hands over the checkpoint folder, and a restarted
worker gets the last one back. No Ray: a crash is an exception raised out of ``report``."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from jobs.train import train_loop
from rnnlib.bundle import load_bundle
from rnnlib.config import job_from_dict
from rnnlib.datasets import tinyshakespeare_path
from rnnlib.fit import TrainState


class Crash(Exception):
    pass


class Checkpoint:
    """What the loop needs of a ``ray.train.Checkpoint``."""

    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def as_directory(self):
        yield str(self.path)


def run(cfg, root: Path, *, resume_from: Path | None = None, crash_after: int | None = None) -> list[Path]:
    """The loop from a checkpoint (or none); each epoch's checkpoint kept as Ray keeps it, in
    ``root/epoch-N``. ``crash_after``: the worker dies once that epoch's checkpoint is committed."""
    kept = []

    def report(metrics: dict, folder: str | None) -> None:
        dest = root / f"epoch-{metrics['epoch']}"
        shutil.copytree(folder, dest)
        kept.append(dest)
        if metrics["epoch"] == crash_after:
            raise Crash

    try:
        train_loop(cfg, Checkpoint(resume_from) if resume_from else None, report, verbose=False)
    except Crash:
        pass
    return kept


def weights(folder: Path) -> dict:
    return load_bundle(folder).model.state_dict()


CASES = {
    # a 2-layer LSTM forecaster, AdamW state and the shuffle seeded by epoch
    "forecast": {"model": {"cell": "lstm", "hidden": 8, "layers": 2}, "data": {"window": 10, "horizon": 5},
                 "train": {"epochs": 3, "batch_size": 256, "max_batches": 6, "lr": 0.01, "patience": 0, "seed": 7}},
    # a char GRU on a short text (data.path set by the test), random windows drawn per epoch
    "text": {"task": "text", "model": {"cell": "gru", "hidden": 32, "embed": 8, "layers": 1},
             "data": {"seq_len": 32, "batching": "random"},
             "train": {"epochs": 3, "batch_size": 16, "max_batches": 10, "lr": 0.01, "patience": 0, "seed": 7}},
}
# dropout draws from the global torch RNG: the checkpoint holds its state, so a resumed worker, which
# reseeds (seed_everything) and builds a model first, still draws the uninterrupted run's masks
CASES["forecast-dropout"] = {**CASES["forecast"], "model": {**CASES["forecast"]["model"], "dropout": 0.3}}


def config(case: str, tmp_path: Path):
    d = CASES[case]
    if d.get("task") == "text":
        text = tmp_path / "text.txt"
        text.write_text(tinyshakespeare_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
        d = {**d, "data": {**d["data"], "path": str(text)}}
    return job_from_dict(d)


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_equals_uninterrupted(tmp_path, case):
    cfg = config(case, tmp_path)
    (tmp_path / "straight").mkdir()
    straight = run(cfg, tmp_path / "straight")
    assert len(straight) == 3
    (tmp_path / "first").mkdir()
    first = run(cfg, tmp_path / "first", crash_after=1)
    assert len(first) == 1  # it did die after epoch 1
    (tmp_path / "second").mkdir()
    second = run(cfg, tmp_path / "second", resume_from=first[-1])
    assert len(second) == 2  # epochs 2 and 3 only: resumed, not restarted
    end, resumed = TrainState.read(straight[-1]), TrainState.read(second[-1])
    assert resumed.resumed_at == [1] and end.resumed_at == []
    for a, b in zip(end.history, resumed.history, strict=True):
        assert a["epoch"] == b["epoch"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=0)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6, abs=0)
    w_end, w_resumed = weights(straight[-1]), weights(second[-1])
    assert w_end.keys() == w_resumed.keys()
    for k in w_end:
        torch.testing.assert_close(w_resumed[k], w_end[k], rtol=1e-6, atol=1e-7, msg=f"{case}: {k} differs")
    # and the resumed run did learn past the checkpoint: its weights moved from epoch 1's
    assert any(not torch.equal(w_resumed[k], weights(first[-1])[k]) for k in w_end)
