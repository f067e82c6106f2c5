"""Training throughput: the plain rnnlib loop in one process vs Ray Train with 1 and 2 workers.

Same model, data and effective batch size everywhere. Throughput = training items per epoch
(forecast windows, or characters) / median training seconds of the timed epochs (the first of
each run includes warm-up and is not timed); ms/step = those seconds / optimizer steps. The
wall columns are what a user waits for per epoch: training and validation in the plain loop;
under Ray Train also the checkpoint and the report (from one epoch's start to the next). Threads:
the plain loop and the single worker use all cores; two workers get half each (Ray sets
OMP_NUM_THREADS from the worker's CPUs).

Every row allocates with what our Ray workers use (jobs.ray_setup: Ray's jemalloc, never purging
freed pages): the script runs itself again under it when started without, so that the plain loop
in this process and Ray Train's worker differ in where they run and not in their malloc (with
glibc's, a step here faulted in some 19,000 pages, half its time: bench/train_allocator.py).

This machine's speed drifts by 10-20% over minutes (other tenants), so the modes run in
``--rounds`` rounds, in a rotated order each round, and each mode's median is taken over all
its rounds: a ratio compares the same stretch of time.

    python bench/train_throughput.py [--epochs 4] [--rounds 2] [--forecast-batch 256]
Targets: 1 Ray worker >= 0.9x the plain loop; 2 workers faster than 1. The 1-thread plain
row separates the gain from two processes from the gain from one thread per process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import allocate_as_ray_workers, allocator, machine, write  # noqa: E402

from rnnlib.config import job_from_dict, to_dict  # noqa: E402
from rnnlib.fit import TrainState, make_optimizer, run_epoch  # noqa: E402
from rnnlib.loop import seed_everything  # noqa: E402
from rnnlib.tables import table  # noqa: E402
from rnnlib.tasks import make_task  # noqa: E402

CORES = os.cpu_count() or 2
CONFIGS = {
    "forecast": {"task": "forecast", "model": {"cell": "lstm", "hidden": 64, "layers": 2},
                 "data": {"window": 60, "horizon": 5}, "train": {"batch_size": 256, "patience": 0}},
    "text": {"task": "text", "model": {"cell": "gru", "hidden": 256, "layers": 1, "embed": 32},
             "data": {"seq_len": 100}, "train": {"batch_size": 64, "max_batches": 40, "patience": 0}},
}


def items_per_epoch(task, cfg) -> tuple[int, int]:
    """(training items, optimizer steps) of one epoch."""
    batches = list(task.train_batches(0))[: cfg.train.max_batches or None]
    return sum(int(y.numel() if cfg.task == "text" else len(y)) for _, y in batches), len(batches)


def plain(cfg, task, threads: int | None = CORES) -> tuple[list[float], list[float], int]:
    """(training seconds per epoch, wall seconds per epoch (training + validation), threads), in
    the calling thread; ``threads``: torch's thread count to set first (None: leave it as it is)."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(0)
    model = task.build_model()
    opt = make_optimizer(model, cfg)
    state, secs, wall = TrainState(), [], []
    while not state.done(cfg):
        tr, val, total, train_s = run_epoch(model, opt, task, cfg, state)
        state.record(tr, val, total, train_s)
        secs.append(train_s)
        wall.append(total)
    return secs, wall, torch.get_num_threads()


def ray_train(cfg, workers: int) -> tuple[list[float], list[float], int]:
    """(training seconds per epoch, wall seconds from one epoch's start to the next (training,
    validation, checkpoint and report: what a user waits for; one fewer than epochs), threads)."""
    from jobs.train import build_trainer

    raw = to_dict(cfg)
    raw["train"]["keep_checkpoints"] = raw["train"]["epochs"]  # metrics_dataframe lists kept ones only
    with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
        cfg = job_from_dict({**raw, "scaling": {"workers": workers, "cpus_per_worker": CORES // workers},
                             "storage": storage})
        df = build_trainer(cfg, f"bench-{cfg.task}-{workers}w").fit().metrics_dataframe.sort_values("epoch")
    assert len(df) == cfg.train.epochs, "every epoch must be in the metrics"
    return list(df["train_seconds"]), list(df["started"].diff().dropna()), int(df["torch_threads"].iloc[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every mode, in a rotated order")
    ap.add_argument("--forecast-batch", type=int, default=256,
                    help="forecaster batch size (Ray's per-step overhead shows at small batches)")
    args = ap.parse_args()
    allocate_as_ray_workers()
    CONFIGS["forecast"]["train"]["batch_size"] = args.forecast_batch
    from jobs.ray_setup import init_ray

    init_ray(num_cpus=CORES)
    rows, out = [], {}
    for name, raw in CONFIGS.items():
        cfg = job_from_dict({**raw, "train": {**raw["train"], "epochs": args.epochs}})
        task = make_task(cfg)
        n, steps = items_per_epoch(task, cfg)
        unit = "windows/s" if name == "forecast" else "chars/s"
        modes = {"plain loop": partial(plain, cfg, task), "plain loop, 1 thread": partial(plain, cfg, task, 1),
                 "Ray Train 1 worker": partial(ray_train, cfg, 1), "Ray Train 2 workers": partial(ray_train, cfg, 2)}
        timed = {mode: [] for mode in modes}
        walls = {mode: [] for mode in modes}
        threads = {}
        for r in range(args.rounds):
            order = list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]
            for mode in order:
                secs, wall, threads[mode] = modes[mode]()
                timed[mode] += secs[1:] or secs
                walls[mode] += wall[1:] or wall
                torch.set_num_threads(CORES)
        base = base_wall = None
        for mode, secs in timed.items():
            med, wall = statistics.median(secs), statistics.median(walls[mode])
            rate = n / med
            base, base_wall = base or rate, base_wall or wall
            rows.append((name, mode, threads[mode], round(rate), unit, round(1000 * med / steps, 1),
                         round(rate / base, 3), round(wall, 2), round(base_wall / wall, 3)))
            out[f"{name}/{mode}"] = {"items_per_epoch": n, "steps_per_epoch": steps, "train_seconds": secs,
                                     "wall_seconds": walls[mode], "rate": rate, "threads_per_worker": threads[mode],
                                     "ratio_vs_plain": rate / base, "wall_ratio_vs_plain": base_wall / wall}
    m = machine()
    print(f"machine: {m['cpus']} cores, torch {m['torch']}, {allocator()} malloc; epochs {args.epochs} (first "
          f"not timed), {args.rounds} round(s)\n")
    print(table(rows, ["task", "mode", "threads/worker", "throughput", "unit", "ms/step", "x plain",
                       "wall s/epoch", "wall x plain"]))
    path = write("train_throughput", {"epochs": args.epochs, "rounds": args.rounds, "allocator": allocator(),
                                      "runs": out})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
