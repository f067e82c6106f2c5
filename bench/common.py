"""Shared by the benchmarks: machine description and writing results."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
# This process's environment before what a script imports after this module changes it (the tests'
# conftest, which bench/score_throughput.py imports for moto, sets OMP_NUM_THREADS=1).
START_ENV = dict(os.environ)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    return out


def allocator() -> str:
    """The malloc this process runs with: Ray's jemalloc when it is loaded (LD_PRELOAD), else glibc's."""
    with open("/proc/self/maps") as f:
        return "jemalloc" if "libjemalloc" in f.read() else "glibc"


def jemalloc_env() -> dict[str, str]:
    """The environment that gives a process what our Ray workers allocate with: the jemalloc Ray
    ships (preloaded), with ``jobs.ray_setup.WORKER_MALLOC``'s settings."""
    from ray._private.services import JEMALLOC_SO

    from jobs.ray_setup import WORKER_MALLOC

    return {"LD_PRELOAD": JEMALLOC_SO, **WORKER_MALLOC}


def allocate_as_ray_workers() -> None:
    """Run this script again, at once, with the allocator of our Ray workers, unless it has it: a
    plain loop in this process then compares with the same loop in a Ray worker, and not glibc's
    malloc with jemalloc (bench/train_allocator.py puts the two side by side)."""
    if allocator() != "jemalloc":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**START_ENV, **jemalloc_env()})


def user_env() -> dict[str, str]:
    """This process's environment less what ``allocate_as_ray_workers`` added: for a job that a
    script starts as a user would, whose driver then runs with the user's malloc."""
    added = jemalloc_env()
    return {k: v for k, v in os.environ.items() if added.get(k) != v}
