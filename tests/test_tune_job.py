"""The Ray Tune job end to end: ASHA, results, best.yaml, resume, S3, trainer trials; on the
session's shared Ray, except the search whose driver (and its own Ray) is killed."""

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from jobhelpers import FAKE_SECRET, kill_group, run, start, wait_for

from jobs.tune import trial_folder
from rnnlib import storage
from rnnlib.bundle import load_bundle
from rnnlib.fit import TrainState

pytestmark = [pytest.mark.slow(seconds=200), pytest.mark.timeout(600)]

# 3 cells x 2 windows on the bundled sample, small models
GRID = ["jobs/configs/forecast-tune.yaml", "tune.num_samples=1", "train.epochs=3", "model.hidden=8",
        "search={model.cell: {grid: [rnn, lstm, gru]}, data.window: {grid: [10, 20]}}"]


def exp_dir(out: str, root: str) -> str:
    name = re.search(r"^search (\S+):", out, re.M).group(1)
    return storage.join(root, name)


def results(d: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(d, "results.parquet"))))


def test_grid_search_asha_results_and_best_yaml_trains(tmp_path, shared_ray):
    r = run("tune", *GRID, f"storage={tmp_path}", env=shared_ray)
    assert r.returncode == 0, r.stderr[-3000:]
    d = Path(exp_dir(r.stdout, str(tmp_path)))
    df = results(str(d))
    assert len(df) == 6 and (df["status"] == "done").all()
    assert sorted(zip(df["model.cell"], df["data.window"])) == sorted(
        (c, w) for c in ("rnn", "lstm", "gru") for w in (10, 20))
    assert (df["stopped"] == "asha").any() and (df["stopped"] == "max_t").any()
    assert (df.loc[df["stopped"] == "asha", "epochs"] < 3).all()
    assert df["best_val_loss"].is_monotonic_increasing  # sorted, best first
    assert len(pd.read_csv(d / "results.csv")) == 6
    for png in ("search.png", "loss.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG"
    best = df.iloc[0]
    bundle = load_bundle(d / "model", task="forecast")
    assert bundle.meta["model"]["args"]["cell"] == best["model.cell"]
    m = json.loads((d / "metrics.json").read_text())
    assert min(h["val_loss"] for h in m["history"]) == pytest.approx(best["best_val_loss"], rel=1e-6)
    assert "| 1 | " in r.stdout and "stopped early by ASHA" in r.stdout
    # once the search is over a trial ASHA stopped keeps no checkpoint unless it is the best; the
    # others keep their best epoch's
    for t, stopped, best_epoch in zip(df["trial_id"], df["stopped"], df["best_epoch"]):
        kept = sorted((d / trial_folder(t)).glob("checkpoint_*"))
        if stopped == "asha" and t != best["trial_id"]:
            assert kept == [], (t, stopped)
        else:
            assert len(kept) == 1 and TrainState.read(kept[0]).epoch == best_epoch, (t, stopped, kept)
    # best.yaml is a complete train config that `rnnjobs train` accepts as is
    t = run("train", d / "best.yaml", "train.epochs=1", f"storage={tmp_path / 'train'}", env=shared_ray)
    assert t.returncode == 0, t.stderr[-3000:]
    assert f"{best['model.cell']} " in t.stdout
    again = run("tune", *GRID, f"storage={tmp_path}", env=shared_ray)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_driver_killed_mid_search_on_s3_resumes_each_epoch_once(tmp_path, moto_s3):
    """The driver's process group (its own Ray) SIGKILLed half way through 8 trials on S3, then
    the same command: every trial in the results once, and every trial reported each of its epochs
    exactly once, whatever the experiment state had saved when the driver died."""
    endpoint, env, s3 = moto_s3
    s3.create_bucket(Bucket="tune-resume")
    root = "s3://tune-resume/searches"
    args = ["tune", "jobs/configs/forecast-tune.yaml", "tune.num_samples=8", "tune.scheduler=fifo",
            "tune.max_concurrent_trials=1", "train.epochs=3", "train.patience=0", "model.hidden=8",
            "search={model.cell: {choice: [rnn, lstm, gru]}, data.window: {choice: [10, 20]}}", f"storage={root}"]
    log = tmp_path / "first.log"
    p = start(*args, env=env, log=log)
    try:
        wait_for(lambda: len(re.findall(r"^\[\d+/8\]", log.read_text(), re.M)) >= 4, 300, "four finished trials")
    finally:
        kill_group(p)
    finished = dict(re.findall(r"^\[\d+/8\] (\S+) .* val (\S+)", log.read_text(), re.M))
    r = run(*args, env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "resuming" in r.stdout
    d = exp_dir(r.stdout, root)
    df = results(d)
    assert len(df) == 8 and df["trial_id"].is_unique and (df["status"] == "done").all(), df["error"].tolist()
    assert (df["epochs"] == 3).all()
    last = dict(zip(df["trial_id"], df["last_val_loss"]))
    for trial_id, val in finished.items():  # a finished trial's result is the one printed before the kill
        assert f"{last[trial_id]:.4f}" == val, (trial_id, last[trial_id], val)
    for trial_id in df["trial_id"]:
        lines = storage.read_bytes(storage.join(d, trial_folder(trial_id), "result.json")).decode().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3], trial_id
    assert FAKE_SECRET not in r.stdout + r.stderr


def test_trainer_trials_on_s3(tmp_path, moto_s3, shared_ray):
    endpoint, env, s3 = moto_s3
    env = {**env, **shared_ray}
    s3.create_bucket(Bucket="tune")
    root = "s3://tune/searches"
    r = run("tune", "jobs/configs/forecast-tune.yaml", "tune.trial=trainer", "tune.num_samples=2",
            "tune.max_concurrent_trials=1", "tune.scheduler=fifo", "train.epochs=2", "model.hidden=8",
            "scaling.workers=2", "scaling.cpus_per_worker=0.9",
            "search={model.cell: {choice: [lstm, gru]}, data.window: {choice: [10, 20]}}",
            f"storage={root}", env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    d = exp_dir(r.stdout, root)
    df = results(d)
    assert len(df) == 2 and (df["epochs"] == 2).all()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tune")["Contents"]]
    assert any(k.endswith("model/weights.pt") for k in keys) and any("/trainer/trial-" in k for k in keys)
    assert any(k.endswith("best.yaml") for k in keys)
    assert FAKE_SECRET not in r.stdout + r.stderr
