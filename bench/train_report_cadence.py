"""Short epochs under Ray Train: how often the controller polls its workers (issue 15).

A Train V2 worker's ``report`` waits in a queue of one until the controller's next poll, every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (Ray's default 2 s; ``jobs.ray_setup.RAY_ENV`` sets it
lower), so an epoch shorter than the interval lasts the interval. This trains
``jobs/configs/forecast-train.yaml`` on the bundled sample (about 0.5 s of training an epoch on
2 cores) with Ray Train's default and with RAY_ENV's interval, in ``--rounds`` rotated rounds, and
prints the wall seconds from one epoch's start to the next (what a user waits for) and the
training seconds, medians over every timed epoch (the first of each run is not timed).

    python bench/train_report_cadence.py [--epochs 6] [--rounds 2]

Target: with RAY_ENV's interval an epoch lasts its own work, not the default interval.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine, write  # noqa: E402
from train_throughput import ray_train  # noqa: E402

from jobs.ray_setup import RAY_ENV, init_ray  # noqa: E402
from rnnlib.config import apply_overrides, job_from_dict, read_yaml  # noqa: E402
from rnnlib.tables import table  # noqa: E402

VAR, RAY_DEFAULT = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"  # ray.train.v2._internal.constants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6, help="epochs per run; the first is not timed")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each interval, in a rotated order")
    args = ap.parse_args()
    raw = apply_overrides(read_yaml(ROOT / "jobs/configs/forecast-train.yaml"),
                          [f"train.epochs={args.epochs}", "train.patience=0"])
    cfg = job_from_dict(raw)
    init_ray()
    intervals = [RAY_DEFAULT, RAY_ENV[VAR]]
    wall, train = {i: [] for i in intervals}, {i: [] for i in intervals}
    for r in range(args.rounds):
        for interval in intervals[r % 2:] + intervals[:r % 2]:
            os.environ[VAR] = interval  # Ray Train hands the driver's value to its controller
            secs, walls, _ = ray_train(cfg, 1)
            train[interval] += secs[1:]
            wall[interval] += walls[1:]
    rows = [(f"{i} s" + (" (Ray's default)" if i == RAY_DEFAULT else " (RAY_ENV)"),
             round(statistics.median(wall[i]), 2), round(statistics.median(train[i]), 2)) for i in intervals]
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}; {cfg.task} {cfg.model.cell} {cfg.model.hidden}, "
          f"bundled sample, {args.epochs} epochs (first not timed), {args.rounds} round(s)\n")
    print(table(rows, ["controller polls every", "wall s/epoch", "training s/epoch"]))
    slow, fast = (statistics.median(wall[i]) for i in intervals)
    print(f"\nwall per epoch, RAY_ENV's interval / Ray's default: {fast / slow:.2f}x")
    out = write("train_report_cadence", {"epochs": args.epochs, "rounds": args.rounds, "wall": wall, "train": train})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
