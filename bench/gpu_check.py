"""Every GPU path, proven in one run of a few minutes on a GPU machine; exit 1 on any failure.

1. Ray Train on all visible GPUs (DDP over NCCL), 2 epochs each: the forecaster in fp32 and
   the char model in fp16 (autocast and the gradient scaler). Each worker reports the device
   its model is on; losses must be finite.
2. A 4-trial search with ``tune.gpus_per_trial=0.25``: four process trials share one GPU, and
   every epoch of every trial reports a CUDA device.
3. 5,050 histories (the bundled ones repeated under new tickers) scored in backtest by the
   ``rnnjobs score`` job with ``gpu: true`` and again on the CPU: windows/s of each, and the
   published forecasts must agree.
4. The char model from (1): 1,000 characters generated on the GPU, and its held-out loss on the
   GPU equal to the CPU's.

Prints one table (check, result, figure, seconds) and writes bench/results/gpu_check.json.

    python bench/gpu_check.py          # on a machine with a GPU
    python bench/gpu_check.py --cpu    # the same checks on the CPU: rehearse the script itself
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import machine, write  # noqa: E402

from rnnlib import publish, storage  # noqa: E402
from rnnlib.bundle import load_bundle  # noqa: E402
from rnnlib.config import job_from_dict  # noqa: E402
from rnnlib.datasets import sample_stocks_dir  # noqa: E402
from rnnlib.device import place  # noqa: E402
from rnnlib.tables import table  # noqa: E402

SERIES = 5050
FORECAST = {"task": "forecast", "model": {"cell": "lstm", "hidden": 64, "layers": 2},
            "data": {"window": 60, "horizon": 5}, "train": {"epochs": 2, "batch_size": 256, "patience": 0}}
TEXT = {"task": "text", "model": {"cell": "gru", "hidden": 256, "layers": 1, "embed": 32},
        "data": {"seq_len": 100}, "train": {"epochs": 2, "batch_size": 64, "max_batches": 60, "patience": 0,
                                            "lr": 0.005}}


class Check:
    """Collects one row per check; an exception or a failed expectation fails the row."""

    def __init__(self):
        self.rows, self.failed = [], 0

    def run(self, name: str, fn) -> object:
        start = time.perf_counter()
        try:
            result, figure = fn()
            status = "ok"
        except Exception as e:  # noqa: BLE001 - every failure becomes a row, and exit 1
            traceback.print_exc()
            first = (str(e).splitlines() or [""])[0][:90]
            result, figure, status = None, f"{type(e).__name__}: {first}", "FAILED"
            self.failed += 1
        self.rows.append((name, status, figure, f"{time.perf_counter() - start:.1f}"))
        print(f"[{status}] {name}: {figure}", flush=True)
        return result


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def train(raw: dict, name: str, workers: int, gpu: bool, storage_root: str):
    """Ray Train, ``workers`` workers: (bundle folder of the last checkpoint, figure)."""
    from jobs.train import build_trainer

    cfg = job_from_dict({**raw, "scaling": {"workers": workers, "gpu": gpu, "cpus_per_worker": 1},
                         "storage": storage_root})
    result = build_trainer(cfg, name, verbose=False).fit()
    df = result.metrics_dataframe
    devices = set(df["device"])
    expect(len(df) == cfg.train.epochs, f"{len(df)} epochs reported, expected {cfg.train.epochs}")
    expect(all(d.startswith("cuda") for d in devices) if gpu else devices == {"cpu"}, f"devices {devices}")
    expect(all(math.isfinite(v) for v in df["val_loss"]), f"val losses {list(df['val_loss'])}")
    d = tempfile.mkdtemp(prefix="gpu-check-ckpt-")
    result.checkpoint.to_directory(d)
    return d, (f"{workers} worker(s) on {sorted(devices)}, {cfg.train.precision}, val loss "
               f"{df['val_loss'].iloc[0]:.4f} -> {df['val_loss'].iloc[-1]:.4f}")


def search(gpu: bool, storage_root: str):
    from jobs.tune import run as tune_run

    gpus = "0.25" if gpu else "0"
    rc = tune_run(str(ROOT / "jobs/configs/forecast-tune.yaml"), [
        "tune.num_samples=4", f"tune.gpus_per_trial={gpus}", "tune.cpus_per_trial=1", "tune.scheduler=fifo",
        "train.epochs=2", f"storage={storage_root}", "tune.name=gpu-check-search"])
    expect(rc == 0, f"rnnjobs tune exited {rc}")
    results = pd.read_parquet(Path(storage_root) / "gpu-check-search" / "results.parquet")
    expect(len(results) == 4 and (results["status"] == "done").all(), f"trials: {list(results['status'])}")
    reports = [json.loads(line) for f in glob.glob(f"{storage_root}/gpu-check-search/*/result.json")
               for line in Path(f).read_text().splitlines() if line.strip()]
    devices = {r["device"] for r in reports}
    expect(len(reports) == 8, f"{len(reports)} trial-epochs reported, expected 8")
    expect(all(d.startswith("cuda") for d in devices) if gpu else devices == {"cpu"}, f"devices {devices}")
    return None, f"4 trials x 2 epochs, gpus_per_trial={gpus}, on {sorted(devices)}"


def histories(n: int) -> Path:
    """``n`` per-ticker files: the bundled histories, repeated under new tickers."""
    src = sorted(sample_stocks_dir().glob("*_data.csv"))
    dst = Path(tempfile.mkdtemp(prefix="gpu-check-histories-"))
    for i in range(n):
        f = src[i % len(src)]
        ticker, new = f.name.removesuffix("_data.csv"), f"T{i:05d}"
        dst.joinpath(f"{new}_data.csv").write_text(f.read_text().replace(f",{ticker}\n", f",{new}\n"))
    return dst


def score(model: str, inputs: Path, gpu: bool, out: str) -> tuple[float, pd.DataFrame]:
    """``rnnjobs score`` in backtest: (windows/s, the published forecasts)."""
    from jobs.score import run as score_run

    actors = torch.cuda.device_count() if gpu else max(1, (os.cpu_count() or 2) // 2)
    start = time.perf_counter()
    rc = score_run(str(ROOT / "jobs/configs/forecast-score.yaml"), [
        f"input={inputs}", f"model={model}", f"output={out}", "mode=backtest", f"gpu={str(gpu).lower()}",
        f"actors={actors}", "files_per_batch=128", f"batch_size={4096 if gpu else 512}"])
    secs = time.perf_counter() - start
    expect(rc == 0, f"rnnjobs score exited {rc}")
    (run,) = [u.rsplit("/", 1)[0] for u, _, _ in storage.list_files(out, recursive=True) if u.endswith("/_SUCCESS")]
    _, manifest = publish.read_manifest(run)
    frames = [pd.read_parquet(storage.join(run, f["path"])) for f in manifest["files"] if f["kind"] == "forecasts"]
    forecasts = pd.concat(frames).sort_values(["ticker", "origin", "step"], ignore_index=True)
    expect(manifest["counts"]["series_scored"] >= SERIES * 0.9, f"scored {manifest['counts']['series_scored']}")
    return len(forecasts) / FORECAST["data"]["horizon"] / secs, forecasts


def scoring(bundle: str, gpu: bool):
    inputs = histories(SERIES)
    rate_gpu, on_gpu = score(bundle, inputs, gpu, tempfile.mkdtemp(prefix="gpu-check-score-gpu-"))
    rate_cpu, on_cpu = score(bundle, inputs, False, tempfile.mkdtemp(prefix="gpu-check-score-cpu-"))
    expect(len(on_gpu) == len(on_cpu), f"{len(on_gpu)} forecast rows on the GPU, {len(on_cpu)} on the CPU")
    diff = ((on_gpu["forecast"] - on_cpu["forecast"]).abs() / on_cpu["forecast"].abs()).max()
    expect(diff < 1e-3, f"GPU and CPU forecasts differ by up to {diff:.2e} (relative)")
    return None, (f"{SERIES} series, {len(on_gpu) // 5} windows: {rate_gpu:,.0f} windows/s "
                  f"{'GPU' if gpu else 'CPU'} vs {rate_cpu:,.0f} CPU (x{rate_gpu / rate_cpu:.2f}); "
                  f"max rel. diff {diff:.1e}")


def text_on_device(bundle_dir: str, device: str):
    from rnnlib.datasets import tinyshakespeare_path
    from rnnlib.sampling import generate
    from rnnlib.tasks import evaluate_text
    from rnnlib.text import read_text, split_text

    b = load_bundle(bundle_dir, task="text")  # a Ray Train checkpoint is a bundle as is
    ids = split_text(b.vocab.encode(read_text(tinyshakespeare_path())), 0.1)[1][:100_000]
    cpu = evaluate_text(b.model, ids, 100)["nats_per_char"]
    place(b.model, device)
    start = time.perf_counter()
    text = generate(b.model, b.vocab, "ROMEO:", 1000, temperature=0.8, seed=0)[0]
    gen_s = time.perf_counter() - start
    on_device = evaluate_text(b.model, ids, 100)["nats_per_char"]
    expect(len(text) == 1000 and set(text) <= set(b.vocab.chars), "generated text")
    expect(abs(on_device - cpu) < 1e-3 * cpu, f"held-out loss {on_device:.5f} on {device}, {cpu:.5f} on the CPU")
    return None, (f"1,000 chars in {gen_s:.2f}s on {device}; held-out {on_device:.4f} nats/char "
                  f"({device}) vs {cpu:.4f} (CPU)")


def score_bundle(root: str) -> str:
    """A forecaster of the benchmark's size, briefly trained in this process (speed, not skill)."""
    from rnnlib.fit import fit

    out = Path(root) / "score-model"
    fit(job_from_dict({**FORECAST, "train": {"epochs": 1, "max_batches": 5, "batch_size": 512}}), out=out,
        log=lambda s: None)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run every check on the CPU (rehearsal)")
    args = ap.parse_args()
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        print("no GPU visible (torch.cuda.is_available() is False); use --cpu to rehearse", file=sys.stderr)
        return 1
    from jobs.ray_setup import init_ray

    init_ray()
    workers = torch.cuda.device_count() if gpu else 2
    root = tempfile.mkdtemp(prefix="gpu-check-")
    c = Check()
    c.run("train forecaster (Ray Train)", lambda: train(FORECAST, "gpu-check-forecast", workers, gpu, root))
    text_raw = {**TEXT, "train": {**TEXT["train"], "precision": "fp16" if gpu else "bf16"}}
    char = c.run("train char model (Ray Train)", lambda: train(text_raw, "gpu-check-text", workers, gpu, root))
    c.run("search, 4 trials sharing a GPU", lambda: search(gpu, root))
    bundle = c.run("bundle for scoring", lambda: (score_bundle(root), "2-layer LSTM 64, window 60"))
    if bundle:
        c.run("score 5,050 histories (backtest)", lambda: scoring(bundle, gpu))
    if char:
        c.run("generate and evaluate", lambda: text_on_device(char, "cuda" if gpu else "cpu"))
    m = machine()
    gpu_name = torch.cuda.get_device_name(0) if gpu else "none (--cpu)"
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}, GPU: {gpu_name} x {torch.cuda.device_count()}\n")
    print(table(c.rows, ["check", "result", "figure", "seconds"]))
    write("gpu_check" + ("" if gpu else "_cpu"), {"gpu": gpu_name, "rows": c.rows})
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
