"""A search of hundreds of trials on one machine: Tune's overhead per trial-epoch, the driver's
memory, the experiment state, the output, and resuming after the driver is killed half way.

Three runs of the same search (a tiny forecaster on the bundled sample, random search, ASHA),
side by side in one run of this script:

  tune     ``rnnjobs tune`` on a local Ray and a local folder, ``--concurrent`` trials at once;
           the driver's peak resident memory (VmHWM), the experiment state's size, the wall time
  plain    every trial of that search for the epochs it ran there, back to back in this process
           (the same ``train_loop``, its checkpoint written to a temporary folder, no Ray)
  resume   the search on S3 (moto on 127.0.0.1): the driver's process group SIGKILLed once half
           the trials have finished, then the same command to the end

    python bench/tune_scale.py [--trials 300] [--max-t 4] [--concurrent 1] [--no-resume] [key=value ...]

Target (issue 18): tune's trial-epochs per minute at least 0.7x plain's (with --concurrent 1 this
is Tune's own overhead: starting trials, reporting, persisting checkpoints and the experiment state);
after the resume every trial is in the results once, no finished trial ran again and no trial
reported an epoch twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import RESULTS, write  # noqa: E402
from jobhelpers import kill_group, moto_server, start  # noqa: E402

from jobs.tune import trial_folder  # noqa: E402
from rnnlib.tables import table  # noqa: E402

SPACE = ("search={model.cell: {choice: [rnn, lstm, gru]}, data.window: {choice: [10, 20, 30]}, "
         "model.hidden: {choice: [4, 8, 16]}, train.lr: {loguniform: [1.0e-3, 1.0e-1]}}")
PROGRESS = re.compile(r"^\[\d+/\d+\] (\S+) .*  epochs (\d+) ", re.M)  # jobs.tune's line per finished trial


def tune_args(a, storage: str) -> list[str]:
    return ["tune", "jobs/configs/forecast-tune.yaml", f"tune.num_samples={a.trials}", f"train.epochs={a.max_t}",
            "tune.scheduler=asha", "tune.grace_period=1", "tune.reduction_factor=2", "train.patience=0",
            f"tune.max_concurrent_trials={a.concurrent}", "tune.cpus_per_trial=1", SPACE, f"storage={storage}",
            *a.overrides]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


def watch(p: subprocess.Popen, until=None) -> tuple[float, float]:
    """Wait for the driver to exit (or ``until()`` to be true); (wall seconds, its peak RSS in MB)."""
    t0, peak = time.perf_counter(), 0.0
    while p.poll() is None and not (until and until()):
        peak = max(peak, peak_rss_mb(p.pid))
        time.sleep(0.5)
    return time.perf_counter() - t0, peak


def experiment(out: str, root: str) -> str:
    return root + "/" + re.search(r"^search (\S+):", out, re.M).group(1)


def run_tune(a, storage: str, log: Path) -> dict:
    p = start(*tune_args(a, storage), log=log)
    wall, peak = watch(p)
    out = log.read_text()
    if p.wait() != 0:
        sys.exit(f"the search failed:\n{out[-4000:]}")
    exp = Path(experiment(out, storage))
    state = {f.name: f.stat().st_size for f in exp.iterdir() if f.is_file() and not f.name.startswith("results")}
    lines = out.splitlines()
    epochs = int(re.search(r"(\d+) trial-epochs of", out).group(1))
    shutil.copy(exp / "search.png", RESULTS / "tune_scale_search.png")
    return {"wall_s": wall, "driver_peak_mb": peak, "trial_epochs": epochs, "exp": str(exp),
            "state_bytes": sum(state.values()), "state_files": state,
            "trial_folder_mb": sum(f.stat().st_size for f in exp.glob("trial_*/**/*") if f.is_file()) / 1e6,
            "output_lines": len(lines), "progress_lines": len(PROGRESS.findall(out)),
            "asha_stopped": int(re.search(r"(\d+) stopped early by ASHA", out).group(1))}


def run_plain(a, results) -> dict:
    """The search's trials, each for the epochs it ran, back to back in this process."""
    import torch

    from jobs.train import train_loop
    from jobs.tune import _trial_job
    from rnnlib.search import load_search

    torch.set_num_threads(1)  # as a trial with tune.cpus_per_trial=1
    search = load_search("jobs/configs/forecast-tune.yaml", tune_args(a, "unused")[2:])
    keys = [d.key for d in search.dims]
    t0 = time.perf_counter()
    for row in results.to_dict("records"):
        cfg = _trial_job(search, {k: row[k] for k in keys})
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=int(row["epochs"])))
        train_loop(cfg, None, lambda metrics, folder: None, verbose=False)
    return {"wall_s": time.perf_counter() - t0, "trial_epochs": int(results["epochs"].sum())}


def run_resume(a, tmp: Path) -> dict:
    """The search on moto S3, its driver killed once half the trials finished, then run again."""
    import boto3

    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        root = "s3://bench/searches"
        first = tmp / "first.log"
        p = start(*tune_args(a, root), log=first)
        half = a.trials // 2
        wall1, peak1 = watch(p, until=lambda: len(PROGRESS.findall(first.read_text())) >= half)
        kill_group(p)  # the driver and the Ray it started
        before = {tid: int(epochs) for tid, epochs in PROGRESS.findall(first.read_text())}
        second = tmp / "second.log"
        p = start(*tune_args(a, root), log=second)
        wall2, peak2 = watch(p)
        out = second.read_text()
        if p.wait() != 0 or "resuming" not in out:
            sys.exit(f"the resumed search failed or did not resume:\n{out[-4000:]}")
        exp = experiment(out, root)
        bucket, prefix = exp[len("s3://"):].split("/", 1)
        import pandas as pd

        results = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{prefix}/results.parquet")["Body"]
                                             .read()))
        again = [tid for tid, _ in PROGRESS.findall(out) if tid in before]
        reported, lost = {}, []  # each trial's epochs in its result.json, in the order reported
        for tid in results["trial_id"]:
            try:
                body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{trial_folder(tid)}/result.json")["Body"].read()
            except s3.exceptions.NoSuchKey:  # finished in the saved state, its file not yet uploaded
                lost.append(tid)
                continue
            reported[tid] = [json.loads(line)["epoch"] for line in body.decode().splitlines() if line.strip()]
        epochs = dict(zip(results["trial_id"], results["epochs"]))
        table_complete = bool(results["best_val_loss"].notna().all() and (results["epochs"] > 0).all())
    return {"finished_before_kill": len(before), "wall_before_kill_s": wall1, "wall_resumed_s": wall2,
            "driver_peak_mb": max(peak1, peak2), "trials": len(results), "unique_trials": results["trial_id"].nunique(),
            "finished_started_again": again, "result_json_lost": lost,
            # a finished trial's epochs in the results as the first driver printed them
            "finished_changed": {t: (n, int(epochs[t])) for t, n in before.items() if epochs[t] != n},
            "table_complete": table_complete,
            "errors": results.loc[results["status"] != "done", ["trial_id", "error"]].values.tolist(),
            "second_log": [line for line in out.splitlines() if any(t in line for t in again)],
            "epochs_reported_twice": sum(len(e) - len(set(e)) for e in reported.values()),
            "gaps": {t: e for t, e in reported.items() if sorted(set(e)) != list(range(1, max(e) + 1))}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--max-t", type=int, default=4, help="ASHA's max_t: the most epochs a trial runs")
    p.add_argument("--concurrent", type=int, default=1, help="trials at once (tune.max_concurrent_trials)")
    p.add_argument("--no-resume", action="store_true", help="skip the S3 kill-and-resume run")
    p.add_argument("overrides", nargs="*", metavar="key=value", default=[])
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tune = run_tune(a, str(tmp / "local"), tmp / "tune.log")
        results = pd.read_parquet(Path(tune["exp"]) / "results.parquet")
        plain = run_plain(a, results)
        resume = None if a.no_resume else run_resume(a, tmp)
    rate = {k: r["trial_epochs"] / r["wall_s"] * 60 for k, r in (("tune", tune), ("plain", plain))}
    print(table([["tune", a.trials, tune["trial_epochs"], tune["wall_s"], rate["tune"], tune["driver_peak_mb"],
                  tune["state_bytes"] / 1e3, tune["output_lines"]],
                 ["plain", len(results), plain["trial_epochs"], plain["wall_s"], rate["plain"], "", "", ""]],
                ["run", "trials", "trial-epochs", "wall s", "trial-epochs / min", "driver peak MB",
                 "experiment state kB", "output lines"]))
    print(f"\ntune / plain trial-epochs per minute: {rate['tune'] / rate['plain']:.2f}x (target >= 0.7x), "
          f"{a.concurrent} trial(s) at once; {tune['asha_stopped']} of {a.trials} trials stopped by ASHA; "
          f"{tune['progress_lines']} progress lines; trial folders {tune['trial_folder_mb']:.1f} MB")
    if resume:
        print(f"resume on S3: killed after {resume['finished_before_kill']} finished trials "
              f"({resume['wall_before_kill_s']:.0f} s), the rerun took {resume['wall_resumed_s']:.0f} s; "
              f"{resume['trials']} trials in the results ({resume['unique_trials']} unique), "
              f"{len(resume['finished_started_again'])} finished trials started again "
              f"({len(resume['finished_changed'])} changed), {resume['epochs_reported_twice']} epochs reported twice, "
              f"{len(resume['gaps'])} trials with an epoch missing, {len(resume['errors'])} failed, "
              f"{len(resume['result_json_lost'])} result.json never uploaded (results table complete: "
              f"{resume['table_complete']});"
              f" driver peak {resume['driver_peak_mb']:.0f} MB")
    out = write("tune_scale", {"args": vars(a), "tune": tune, "plain": plain, "resume": resume,
                               "ratio": rate["tune"] / rate["plain"]})
    print(f"written: {out} and {RESULTS / 'tune_scale_search.png'}")


if __name__ == "__main__":
    main()
