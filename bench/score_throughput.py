"""Scoring throughput: per-window calls vs batched PyTorch vs the Ray Data job, and memory.

On the 505 histories of ../shared/data/stocks/sp500_5yr (the bundled sample if absent), with a
2-layer LSTM of 64 over 60-day windows (horizon 5, 3 quantiles), backtest mode, one origin per
day over each series' last 250 days:

(a) the tutorial's way: one forward call per window;
(b) the ceiling: all windows in memory, large batches, one process, no I/O (best of a few
    batch sizes), also as a fraction of this machine's fp32 matrix-multiply rate measured here;
(c) `rnnjobs score` end to end (Ray Data, Parquet parts, manifest, _SUCCESS), timed inside one
    running Ray (ray.init excluded): the per-ticker CSVs from a local folder; the same rows as one
    Parquet file per trading day (Hive `date=` folders: the long layout, grouped by ticker with a
    Ray Data hash shuffle); the per-ticker CSVs read from and published to moto S3 on 127.0.0.1
    (uploaded there first); and four copies of the per-ticker CSVs under new tickers, which with
    the first job splits a job's time into what it costs whatever its size and what each window
    adds. Each job's windows are its own count: the metrics parts its manifest lists, checked
    against the manifest's forecast rows; the manifest's input is the source given.
Then, with that Ray stopped (no process of it left), forecast mode at 505 and 5,050 series (the
histories repeated under new tickers), each `rnnjobs score` a process with its own Ray: wall
time and peak memory (RSS summed over the job's process and every process it started).

(a) and (b) run in this process with the allocator of our Ray workers, where (c) scores (Ray's
jemalloc, never purging: the script runs itself again under it): with glibc's malloc the ceiling
at batch 1,024 faulted in some 1.6-1.9 million pages and ran at 19,000-21,500 windows/s, against
26,000-41,000 with jemalloc (ad-hoc, 2 cores, 2 runs each, 2026-11-30).

    python bench/score_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from common import allocate_as_ray_workers, allocator, machine, user_env, write  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from jobhelpers import moto_server  # noqa: E402
from layouts import read_per_ticker, write_layout  # noqa: E402

from rnnlib import publish  # noqa: E402
from rnnlib.bundle import load_bundle  # noqa: E402
from rnnlib.config import job_from_dict  # noqa: E402
from rnnlib.datasets import sample_stocks_dir  # noqa: E402
from rnnlib.features import Windows, series_windows  # noqa: E402
from rnnlib.fit import fit  # noqa: E402
from rnnlib.stocks import load_histories  # noqa: E402
from rnnlib.tables import table  # noqa: E402

SP500 = ROOT.parent / "shared" / "data" / "stocks" / "sp500_5yr"
SCORE_CONFIG = str(ROOT / "jobs" / "configs" / "forecast-score.yaml")
WINDOW, HORIZON, HIDDEN, LAYERS = 60, 5, 64, 2


def lstm_flops_per_window(features: int = 1) -> int:
    """2 x multiply-adds of the LSTM matmuls (4 gates x (input + hidden) x hidden per layer and
    step) plus the head; elementwise gate math is not counted."""
    per_step = sum(8 * HIDDEN * (inp + HIDDEN) for inp in [features] + [HIDDEN] * (LAYERS - 1))
    return per_step * WINDOW + 2 * HIDDEN * HORIZON * 3


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


@torch.inference_mode()
def rate(model, x: torch.Tensor, batch: int) -> float:
    model(x[:batch])
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    return len(x) / (time.perf_counter() - start)


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants every 0.2 s."""

    def __init__(self, root_pid: int):
        self.root, self.peak, self._stop = psutil.Process(root_pid), 0, threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def replicate(src: Path, dst: Path, copies: int) -> Path:
    """Copies of every history under new tickers (the Name column and file name both change)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.csv")):
        text = f.read_text()
        ticker = f.name.removesuffix("_data.csv")
        for k in range(copies):
            new = f"{ticker}R{k}"
            (dst / f"{new}_data.csv").write_text(text.replace(f",{ticker}\n", f",{new}\n"))
    return dst


def score_job(args: list[str]) -> tuple[float, int]:
    """`rnnjobs score` in a subprocess with its own local Ray: (wall seconds, peak RSS bytes)."""
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "jobs.cli", "score", *args], cwd=ROOT, text=True, env=user_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    with PeakRSS(p.pid) as mem:
        out, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"score job failed:\n{out[-3000:]}")
    return time.perf_counter() - start, mem.peak


def scored_windows(output: str) -> tuple[int, dict]:
    """(backtest windows, manifest) of the run published under ``output``: the windows are the job's
    own count (its manifest's counts.windows), checked against the manifest's forecast rows over the
    model's horizon."""
    _, manifest = publish.read_manifest(publish.resolve(output))
    windows = manifest["counts"]["windows"]
    rows, horizon = manifest["counts"]["forecast_rows"], manifest["model"]["horizon"]
    assert rows == windows * horizon, f"{output}: {rows} forecast rows for {windows} windows of {horizon} steps"
    return windows, manifest


@contextmanager
def moto_s3():
    """A moto S3 server on 127.0.0.1 with the tests' fake credentials (tests/jobhelpers.py), set in
    this process before Ray starts its workers and restored afterwards; yields a client."""
    with moto_server():
        yield boto3.client("s3")


SCALED = "per-ticker CSV x4 (4 copies under new tickers), local"


class Same:
    """The warm-up's actor: returns its batch."""

    def __call__(self, batch):
        return batch


def backtest_jobs(src: Path, work: Path, batch: int) -> tuple[dict, dict, dict]:
    """(c): `rnnjobs score` in backtest mode on three layouts of the same rows, and on four times
    the per-ticker files (what a job costs whatever its size, and what each window adds), inside
    one Ray started here (its start not timed) and stopped at the end, so that none of its
    processes is alive during the memory measurements. A warm-up dataset through a one-actor
    pool runs first, not timed: the first Ray Data job of a Ray starts its session actors
    (stats, autoscaling coordinator), which cost the first job timed (per-ticker CSVs) about
    1.3-2 s that the jobs after it do not pay, and made the daily layout's ratio look better.
    Returns ({label: windows/s}, {label: windows}, {label: seconds})."""
    import ray

    from jobs.ray_setup import init_ray
    from jobs.score import run as score_run

    raw = read_per_ticker(sorted(src.glob("*.csv")))
    daily = write_layout(raw, work / "daily", "hive_daily")
    common = [f"model={work / 'model'}", "mode=backtest", "backtest_days=250", "step=1",
              f"batch_size={batch}", "files_per_batch=32"]
    jobs = {"per-ticker CSV, local folder": (str(src), str(work / "out-local")),
            f"one Parquet file per day ({len(list(daily.glob('date=*')))} files), local": (
                str(daily), str(work / "out-daily")),
            "per-ticker CSV, moto S3 in and out": ("s3://bench/histories/", "s3://bench/out"),
            SCALED: (str(replicate(src, work / "x4", 4)), str(work / "out-x4"))}
    rates, windows, seconds = {}, {}, {}
    with moto_s3() as s3:  # the credentials are in the environment before Ray starts its workers
        s3.create_bucket(Bucket="bench")
        for f in sorted(src.glob("*.csv")):
            s3.upload_file(str(f), "bench", f"histories/{f.name}")
        init_ray()
        try:
            ray.data.range(2).map_batches(Same, compute=ray.data.ActorPoolStrategy(size=1)).materialize()
            for label, (source, output) in jobs.items():
                start = time.perf_counter()
                score_run(SCORE_CONFIG, [*common, f"input={source}", f"output={output}"])
                secs = time.perf_counter() - start
                windows[label], manifest = scored_windows(output)
                assert manifest["input"]["uri"] == source, (manifest["input"], source)  # what it read
                rates[label], seconds[label] = windows[label] / secs, secs
        finally:
            ray.shutdown()
    _, left = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=30)
    assert not left, f"processes of this benchmark's Ray still running: {[p.name() for p in left]}"
    return rates, windows, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="bundled sample only, smaller runs")
    args = ap.parse_args()
    allocate_as_ray_workers()
    src = SP500 if SP500.exists() and not args.quick else sample_stocks_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    cfg = job_from_dict({"model": {"hidden": HIDDEN, "layers": LAYERS}, "data": {"window": WINDOW, "horizon": HORIZON},
                         "train": {"epochs": 1, "max_batches": 5, "batch_size": 512}})
    fit(cfg, out=work / "model", log=lambda s: None)
    bundle = load_bundle(work / "model")
    model = bundle.model
    fallback = next(iter(bundle.transforms.values()))  # speed does not depend on the scaler

    hist = load_histories(src, min_rows=WINDOW + HORIZON + 2, max_jump=1.75)
    parts = []
    for sid, (t, df) in enumerate(sorted(hist.series.items())):
        first = max(len(df) - 1 - 250, WINDOW)
        parts.append(series_windows(df, bundle.transforms.get(t, fallback), WINDOW, HORIZON,
                                    np.arange(first, len(df) - HORIZON), sid))
    x = torch.from_numpy(Windows.concat(parts).x)
    n, flops, threads, gflops = len(x), lstm_flops_per_window(), torch.get_num_threads(), matmul_gflops()

    with torch.inference_mode():  # (a): one call per window, on a sample
        sample = x[: 500 if args.quick else 2000]
        start = time.perf_counter()
        for i in range(len(sample)):
            model(sample[i:i + 1])
        per_window = len(sample) / (time.perf_counter() - start)
    ceilings = {b: rate(model, x, b) for b in (128, 256, 512, 1024, 4096)}
    best_batch = max(ceilings, key=ceilings.get)
    ceiling = ceilings[best_batch]

    job_rate, job_windows, job_seconds = backtest_jobs(src, work, best_batch)
    scaled_windows = job_windows.pop(SCALED)
    assert len(set(job_windows.values())) == 1, f"the layouts scored different windows: {job_windows}"
    assert scaled_windows == 4 * n, f"4 copies scored {scaled_windows} windows, not 4 x {n}"
    # job seconds = fixed + windows / marginal rate, from the per-ticker job at 1x and 4x
    t1, t4 = job_seconds["per-ticker CSV, local folder"], job_seconds[SCALED]
    fixed, marginal = (4 * t1 - t4) / 3, 3 * n / (t4 - t1)

    rows = [("(a) one forward call per window", round(per_window), per_window / ceiling, "-"),
            (f"(b) batched PyTorch, batch {best_batch}, {threads} threads", round(ceiling), 1.0,
             f"{ceiling * flops / 1e9 / gflops:.1%}")]
    rows += [(f"(c) rnnjobs score, {label}", round(r), r / ceiling, "-") for label, r in job_rate.items()]
    per_ticker, by_day = list(job_rate.values())[:2]
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}, {threads} threads, {allocator()} malloc; fp32 matmul "
          f"{gflops:.1f} GFLOP/s (2048x2048); {flops / 1e6:.2f} MFLOP per window (LSTM 2x64 over 60 steps)")
    print(f"{len(hist.series)} series from {src}, {n} backtest windows\n")
    print(table(rows, ["mode", "windows/s", "x (b)", "(b) / matmul rate"]))
    print(f"windows each job scored (its metrics parts, as its manifest lists them): "
          f"{next(iter(job_windows.values()))} (the ceiling's: {n}); "
          f"daily Parquet / per-ticker CSV: {by_day / per_ticker:.2f}x")
    print(f"per-ticker CSV at 1x and 4x the windows: {fixed:.1f} s a job whatever its size (listing, actors "
          f"starting, the first batch), then {marginal:.0f} windows/s = {marginal / ceiling:.2f}x (b) for each "
          "window more")

    scale = {}
    copies = 2 if args.quick else 10
    for label, folder in (("1x", src), (f"{copies}x", replicate(src, work / "many", copies))):
        secs, peak = score_job([SCORE_CONFIG, f"input={folder}", f"model={work / 'model'}",
                                f"output={work / ('fc-' + label)}", "files_per_batch=32"])
        scale[label] = {"files": len(list(folder.glob("*.csv"))), "seconds": secs, "peak_rss_mb": peak / 2**20}
    base, big = scale["1x"], scale[f"{copies}x"]
    print("\n" + table([(f"{v['files']} files", f"{v['seconds']:.1f}", f"{v['peak_rss_mb']:.0f}")
                        for v in scale.values()], ["forecast mode", "wall s (incl. Ray start)", "peak RSS MB"]))
    print(f"peak memory ratio {big['peak_rss_mb'] / base['peak_rss_mb']:.2f}x for "
          f"{big['files'] / base['files']:.0f}x the series")
    out = write("score_throughput", {"source": str(src), "windows": n, "flops_per_window": flops,
                                     "matmul_gflops": gflops, "per_window": per_window, "ceilings": ceilings,
                                     "jobs": job_rate, "job_windows": job_windows, "job_seconds": job_seconds,
                                     "job_fixed_seconds": fixed, "job_marginal_rate": marginal,
                                     "forecast_scale": scale})
    print(f"\nresults: {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
