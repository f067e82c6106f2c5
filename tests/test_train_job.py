"""The Ray Train job end to end (2 CPU workers): on a local Ray started by the job where the test
is about that Ray (a stale address file, a fault in its workers, its driver killed), else on the
session's shared Ray."""

import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from jobhelpers import FAKE_SECRET, faults, kill_group, run, start, wait_for
from pyarrow.fs import FileSelector

from jobs.train import run_name
from rnnlib import storage
from rnnlib.bundle import load_bundle
from rnnlib.config import load_job
from rnnlib.loop import predict
from rnnlib.sampling import generate
from rnnlib.tasks import make_task

pytestmark = [pytest.mark.slow(seconds=360), pytest.mark.timeout(600)]

FORECAST = ["jobs/configs/forecast-train.yaml", "model.hidden=16", "data.window=20", "scaling.workers=2"]
TEXT = ["jobs/configs/text-train.yaml", "model.hidden=64", "model.embed=16", "data.seq_len=64",
        "train.max_batches=40", "train.lr=0.01", "scaling.workers=2"]


def run_dir(storage_root: Path) -> Path:
    (d,) = [p for p in storage_root.iterdir() if p.is_dir()]
    return d


@pytest.fixture
def stale_ray_address():
    """A Ray temp dir whose ray_current_cluster names a cluster long gone (as `ray start` leaves
    it): Ray's State API auto-detection finds that address first."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    yield {"RAY_TMPDIR": str(root)}
    shutil.rmtree(root, ignore_errors=True)


def test_forecast_two_workers_export_and_idempotent_rerun(tmp_path, stale_ray_address):
    r = run("train", *FORECAST, "train.epochs=3", f"storage={tmp_path}", env=stale_ray_address)
    assert r.returncode == 0, r.stderr[-3000:]
    # a successful run ends without a traceback, however stale the machine's Ray address file
    assert "Traceback" not in r.stdout + r.stderr and "PlacementGroupCleaner" not in r.stdout + r.stderr
    d = run_dir(tmp_path)
    m = json.loads((d / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2]
    assert min(h["val_loss"] for h in m["history"][1:]) < m["history"][0]["val_loss"]
    assert m["final"]["rmae"] < 1.1 and m["resumed_from_epoch"] == 0
    cfg = load_job(str(ROOT / FORECAST[0]), [*FORECAST[1:], "train.epochs=3", f"storage={tmp_path}"])
    data = make_task(cfg).fingerprint()  # the run is named by its config and its data, as recorded
    assert m["data"] == data and d.name == run_name(cfg, data) and data["series"] == 26
    assert (d / "loss.png").read_bytes()[:4] == b"\x89PNG"
    b = load_bundle(d / "model", task="forecast")
    x = np.random.default_rng(0).normal(size=(4, 20, 3)).astype(np.float32)  # close, range, volatility
    assert predict(b.model, x).shape == (4, 5, 3)
    # each worker read its own 13 series; a checkpoint (saved by worker 0) holds every series' scaler
    assert "each worker reads its own 13-13 series" in r.stdout
    last = max((c for c in d.glob("checkpoint_*") if c.is_dir()), key=lambda c: c.name)
    assert set(load_bundle(last, task="forecast").transforms) == set(b.transforms) and len(b.transforms) == 26
    assert "rMAE (model / persistence)" in r.stdout and "epoch 3/3" in r.stdout + r.stderr
    again = run("train", *FORECAST, "train.epochs=3", f"storage={tmp_path}")  # finds it finished: starts no Ray
    assert again.returncode == 0 and "already finished" in again.stdout


def test_text_two_workers_val_loss_down_and_bundle_generates(tmp_path, shared_ray):
    r = run("train", *TEXT, "train.epochs=3", f"storage={tmp_path}", env=shared_ray)
    assert r.returncode == 0, r.stderr[-3000:]
    d = run_dir(tmp_path)
    m = json.loads((d / "metrics.json").read_text())
    vals = [h["val_loss"] for h in m["history"]]
    assert vals[-1] < vals[0] and m["final"]["val"]["nats_per_char"] == pytest.approx(min(vals), rel=1e-4)
    b = load_bundle(d / "model", task="text")
    text = generate(b.model, b.vocab, "ROMEO:", 50, seed=0)[0]
    assert len(text) == 50 and set(text) <= set(b.vocab.chars)


@pytest.mark.parametrize("max_failures", [1, 0])
def test_worker_crash(tmp_path, max_failures):
    marker = tmp_path / "crashed"
    # Ray Train registers a report when its controller next polls the workers (every 2 s by
    # default), and an epoch here is shorter: at the default a crash could find no report registered
    # and restart from scratch (seen once in a full suite run). Polled every 0.1 s, as epochs this
    # short need (0.4 s here), epoch 0's report at least is registered before the crash.
    env = faults(RNNJOBS_FAULT_EPOCH="2", RNNJOBS_FAULT_MARKER=str(marker), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1")
    r = run("train", *FORECAST, "train.epochs=3", f"train.max_failures={max_failures}",
            f"storage={tmp_path / 'runs'}", env=env)
    assert marker.exists(), "the fault hook did not fire"
    if max_failures:
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads((run_dir(tmp_path / "runs") / "metrics.json").read_text())
        assert [h["epoch"] for h in m["history"]] == [0, 1, 2]  # right epoch count, none doubled
        # and resumed from a checkpoint (a restart from scratch also ends with epochs [0, 1, 2], with
        # nothing resumed). The worker dies as epoch 2 starts, right after epoch 1's report: if the
        # controller has not polled since, that report is lost with the worker and the run resumes
        # from epoch 0's checkpoint (at 1); else from epoch 1's (at 2).
        assert m["resumed_at"] in ([1], [2]) and m["resumed_from_epoch"] == m["resumed_at"][0]
    else:
        assert r.returncode == 1
        assert "training failed after 0 allowed worker failure(s)" in r.stdout
        assert "raise train.max_failures" in r.stdout


def _epochs_in_checkpoints(root: str) -> int:
    """The highest epoch any checkpoint under ``root`` (local or s3://) has finished."""
    fs, path = storage.filesystem(root)
    best = 0
    for info in fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True)):
        if info.path.endswith("train_state.pt"):
            with fs.open_input_stream(info.path) as f:
                state = torch.load(io.BytesIO(f.read()), weights_only=True)
            best = max(best, json.loads(state["state"])["epoch"])
    return best


def test_driver_killed_then_rerun_resumes(tmp_path, moto_s3):
    """On S3 storage, where a cluster job keeps its runs. (Resuming from local storage is the same
    code on another pyarrow filesystem: tests/test_resume.py drives it in-process and
    test_worker_crash through Ray Train; a local variant of this test cost 60-97 s of the suite.)"""
    endpoint, env, s3 = moto_s3
    s3.create_bucket(Bucket="runs-resume")
    root = "s3://runs-resume/jobs"
    # short epochs: this is about what survives the driver, not about learning
    args = ["train", *TEXT, "train.epochs=5", "train.max_batches=15", "train.patience=0", f"storage={root}"]
    p = start(*args, env=env, log=tmp_path / "first.log")
    try:
        wait_for(lambda: _epochs_in_checkpoints(root) >= 2, 240, "two checkpoints")
    finally:
        kill_group(p)  # the driver host dies, with everything it started
    done_before = _epochs_in_checkpoints(root)
    r = run(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(storage.read_bytes(storage.join(root, _name(r.stdout), "metrics.json")))
    assert m["resumed_from_epoch"] > 0
    assert m["resumed_from_epoch"] >= done_before - 1  # at most one finished epoch is redone
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3, 4]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="runs-resume")["Contents"]]
    assert any(k.endswith("model/weights.pt") for k in keys) and any("checkpoint_" in k for k in keys)
    assert FAKE_SECRET not in r.stdout + r.stderr + (tmp_path / "first.log").read_text()
    assert FAKE_SECRET not in json.dumps(m)


def _name(stdout: str) -> str:
    line = next(li for li in stdout.splitlines() if li.startswith("run "))
    return line.split()[1].rstrip(":")


def test_bad_config_fails_before_ray_starts(tmp_path):
    code = ("import sys; from jobs.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    for bad, expect in [(["train.bogus=1"], "train.bogus: unknown key"),
                        (["model.cell=transformer"], "choose one of rnn, lstm, gru"),
                        (["data.path=/no/such/dir"], "/no/such/dir: no such file or folder")]:
        r = subprocess.run([sys.executable, "-c", code, "train", "jobs/configs/forecast-train.yaml", *bad,
                            f"storage={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert expect in r.stderr and "Traceback" not in r.stderr
        assert "NO_RAY" in r.stdout
