"""Training on CPU with glibc's malloc and with the jemalloc our Ray workers use (issue 15).

PyTorch's CPU allocator caches nothing: a training step frees its activations, and the next step
allocates them again. glibc hands much of that back to the kernel (large blocks are unmapped, and
a thread's arena deletes its 64 MB heaps once free), so the next step faults every page in again,
zeroed. ``jobs.ray_setup`` makes our Ray workers allocate with the jemalloc Ray ships, set never
to purge freed pages (``RAY_LD_PRELOAD_ON_WORKERS``, ``WORKER_MALLOC``).

This trains bench/train_throughput.py's workload (``plain``: rnnlib.fit.run_epoch, all cores) with
each allocator in three places: a plain process (its main thread); the same with a local Ray
started beside it and idle (its raylet, GCS, dashboard and idle workers share the cores); and the
one worker of a Ray Train run (its training thread) under a local Ray started with
``RAY_LD_PRELOAD_ON_WORKERS`` 1 or 0. bench/train_throughput.py's plain loop is the second place.
The allocator is chosen when a process starts, so every run is a fresh process; the runs go in
``--rounds`` rounds, in a rotated order each round (this machine drifts by 10-20% over minutes).
In the training process, an epoch of warm-up first, then ``--epochs`` timed epochs; columns:
median training seconds an epoch, and the process's minor page faults an epoch over the timed ones.

    python bench/train_allocator.py [--task forecast|text] [--epochs 3] [--rounds 2]

Targets: with jemalloc, an epoch faults in far fewer pages than with glibc, in every place; Ray
Train with 1 worker at >= 0.9x the plain loop beside a local Ray when both allocate alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import allocator, jemalloc_env, machine, user_env, write  # noqa: E402
from train_throughput import CONFIGS, CORES, items_per_epoch, plain  # noqa: E402

from rnnlib.config import job_from_dict  # noqa: E402
from rnnlib.tables import table  # noqa: E402
from rnnlib.tasks import make_task  # noqa: E402

ALLOCATORS = ("glibc", "jemalloc")
PLACES = ("plain process", "plain process, local Ray idle", "Ray Train 1 worker")


def minor_faults() -> int:
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def measured(raw: dict) -> dict:
    """In the training process: one epoch of warm-up, then ``raw``'s epochs, timed."""
    cfg = job_from_dict(raw)
    task = make_task(cfg)
    plain(job_from_dict({**raw, "train": {**raw["train"], "epochs": 1}}), task)
    before = minor_faults()
    secs, _, threads = plain(cfg, task)
    return {"secs": secs, "faults_per_epoch": (minor_faults() - before) / len(secs), "threads": threads,
            "allocator": allocator()}


def _train_fn(config: dict) -> None:
    import ray.train

    Path(config["out"]).write_text(json.dumps(measured(config["job"])))
    ray.train.report({"done": 1})


def child(place: str, raw: dict) -> dict:
    if place == "plain process":
        return measured(raw)
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.ray_setup import init_ray

    init_ray(num_cpus=CORES)
    if place == "plain process, local Ray idle":
        return measured(raw)
    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as tmp:
        out = Path(tmp) / "result.json"
        TorchTrainer(_train_fn, train_loop_config={"job": raw, "out": str(out)},
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": CORES}),
                     run_config=ray.train.RunConfig(storage_path=tmp, name="alloc")).fit()
        return json.loads(out.read_text())


def env_for(alloc: str, place: str) -> dict[str, str]:
    """A plain process gets jemalloc preloaded; Ray's workers get it from the raylet, or not."""
    env = {k: v for k, v in user_env().items() if k != "RAY_ADDRESS"}
    if place.startswith("plain process"):
        return {**env, **jemalloc_env()} if alloc == "jemalloc" else env
    return {**env, "RAY_LD_PRELOAD_ON_WORKERS": "1" if alloc == "jemalloc" else "0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(CONFIGS), default="forecast")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs a run, after one of warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every (allocator, place), in a rotated order")
    ap.add_argument("--child", choices=PLACES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    base = CONFIGS[args.task]
    raw = {**base, "train": {**base["train"], "epochs": args.epochs}}
    if args.child:
        print("RESULT " + json.dumps(child(args.child, raw)), flush=True)
        return
    runs = [(a, p) for a in ALLOCATORS for p in PLACES]
    got = {run: [] for run in runs}
    for r in range(args.rounds):
        for alloc, place in runs[r % len(runs):] + runs[:r % len(runs)]:
            cmd = [sys.executable, __file__, "--child", place, "--task", args.task, "--epochs", str(args.epochs)]
            p = subprocess.run(cmd, env=env_for(alloc, place), capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.exit(f"{alloc}, {place}: exit {p.returncode}\n{p.stderr[-3000:]}")
            res = json.loads(line.removeprefix("RESULT "))
            if res["allocator"] != alloc:  # the run would measure the other allocator
                sys.exit(f"{alloc}, {place}: the training process ran with {res['allocator']}")
            got[(alloc, place)].append(res)
            print(f"round {r + 1}: {alloc}, {place}: {', '.join(f'{s:.2f}' for s in res['secs'])} s, "
                  f"{res['faults_per_epoch']:,.0f} faults/epoch", flush=True)
    med = {run: statistics.median(s for res in got[run] for s in res["secs"]) for run in runs}
    faults = {run: statistics.median(res["faults_per_epoch"] for res in got[run]) for run in runs}
    cfg = job_from_dict(raw)
    steps = items_per_epoch(make_task(cfg), cfg)[1]
    ref = med[("glibc", "plain process")]
    rows = [(alloc, place, got[(alloc, place)][0]["threads"], f"{med[(alloc, place)]:.2f}",
             f"{1000 * med[(alloc, place)] / steps:.1f}", f"{faults[(alloc, place)]:,.0f}",
             f"{ref / med[(alloc, place)]:.2f}") for alloc, place in runs]
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}; {args.task}, {steps} steps an epoch, "
          f"{args.epochs} timed epochs a run, {args.rounds} round(s); medians\n")
    print(table(rows, ["allocator", "where", "torch threads", "s/epoch", "ms/step", "minor faults/epoch",
                       "x glibc plain"]))
    for place in PLACES:
        print(f"{place}: jemalloc {med[('glibc', place)] / med[('jemalloc', place)]:.2f}x the speed of glibc")
    for alloc in ALLOCATORS:
        print(f"{alloc}: Ray Train at " + ", ".join(f"{med[(alloc, p)] / med[(alloc, PLACES[-1])]:.2f}x the {p}"
                                                   for p in PLACES[:-1]))
    out = write(f"train_allocator_{args.task}", {"epochs": args.epochs, "rounds": args.rounds, "steps": steps,
                                                "runs": {f"{a}/{p}": got[(a, p)] for a, p in runs}})
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
