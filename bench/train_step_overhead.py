"""Where Ray Train's per-step overhead comes from (issue 15): the same training epochs, timed in
the places a step can run.

bench/train_throughput.py measured Ray Train with one worker at 0.81-0.92x the plain loop for
the forecaster (about 10 ms more per optimizer step), with identical code on both sides:
rnnlib.fit.run_epoch, one worker, no DDP wrapper at world size 1 (prepare_model wraps only when
the world is larger), checkpoint and report outside the timed training seconds. What differs is
where the loop runs: Train V2 runs the training function in a thread of the worker actor
(``TrainingThread``), not in the process's main thread, and torch's CPU kernels use OpenMP,
whose thread team belongs to the thread that starts a parallel region. A thread alone turned out
not to cost this much (below).

Found later (2026-11-30), and not by this script: the memory allocator. With glibc's malloc an
epoch faulted in 1.5-2.5 million pages (the activations a step frees go back to the kernel and
the next step faults them in again), about half the epoch, and how many depended on the
process's allocation history: more in a Train worker than in a plain process. Our Ray workers now
allocate with Ray's jemalloc, which keeps them (jobs.ray_setup.WORKER_MALLOC; measured by
bench/train_allocator.py), and this script runs itself under the same allocator, so that its rows
differ only in where the loop runs. The figures below were measured with glibc everywhere.

This runs one workload (forecaster, LSTM 2x64, 60-day windows, batch 256, the bundled sample;
epochs, the first not timed) in seven places, in rotated rounds (this machine drifts by 10-20%
over minutes), each with all cores (2 torch threads here):

- this process, its main thread; and a second thread of this process;
- a Ray actor's main thread (the actor method); a thread the actor starts; the same after the
  actor's main thread ran one torch matrix product (so that thread owns an OpenMP team first);
  a thread the actor starts from a method that returns at once, so that the actor's main thread
  is back in Ray's task loop while the epochs run (as a Train worker's is);
- Ray Train, one worker (the training function in its TrainingThread).

The last column counts the wake-ups a second of the process's main thread while the epochs ran:
idle in Ray's task loop it wakes every 10 ms (Ray core checks for signals at that period).

    python bench/train_step_overhead.py [--epochs 3] [--rounds 2]

What was tried against the thread's cost, one run each on 2 cores (epoch seconds in a second
thread after a main-thread op / in the main thread; this box's noise is 10-20%), none a fix:
torch.set_num_threads again inside the thread (7.9-8.0 / 6.2); MALLOC_ARENA_MAX=1, so that the
thread allocates from the main arena (7.8-8.0 / 5.7-6.3); GOMP_SPINCOUNT 0, 30000, 3000000
(8.8 / 8.5, 7.8 / 6.1, 8.7 / 6.7); OMP_PROC_BIND=false (8.0 / 6.1); OMP_WAIT_POLICY=PASSIVE
(7.9 / 8.0) and ACTIVE (14.3 in the thread). With one torch thread the two places are equal
(9.38 / 9.36 s), and with oneDNN off (torch.backends.mkldnn.enabled = False) the gap grows
(11.6-11.8 / 6.3-6.7 s, ATen's own OpenMP loops doing the LSTM's work).

Where that thread's cost comes from, read off /proc/<pid>/task/*/status (ad-hoc, 2026-11-30, 200
LSTM steps): in a thread whose process's main thread owns an OpenMP team, the thread and its
OpenMP worker slept and woke about 125,000 times each, against a few times in a main thread.
libgomp spins only briefly before it sleeps once it manages more threads than there are cores, so
every parallel region pays for a futex wake-up: that is the "after a main-thread op" rows.

Ray Train's worker is not that case: its training thread's OpenMP team woke 4-9 times (it spins),
and a thread beside a main thread back in Ray's task loop ran at 0.98x (2026-11-30, 2 rounds),
while Ray Train ran at 0.79x in the same run. Not the cause either, each checked ad-hoc on the
LSTM steps: the main thread's 100 wake-ups a second (the 0.98x row), the gloo process group Ray
Train sets up even for one worker (its TCP loop thread also wakes every 10 ms; destroyed first:
10.3-10.9 s against 10.0-10.6 s, 3 runs each), Ray Train's PreemptionWatcher actor (about 1
CPU-second at the start, nothing later; RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: 9.0-10.3 against
9.3-9.8 s after a 6 s wait), and the worker's settings (switch interval, gc, torch flags,
OpenMP environment: the same as an actor's). One part found: every idle Ray actor's main thread
wakes every 10 ms (1,060 wake-ups in 10.7 s each), and a one-worker Ray Train run has seven such
actors (the controller, its synchronization actor, the placement-group cleaner, the preemption
watcher, the dataset manager, Ray Data's autoscaling coordinator, the worker itself) plus gloo's
loop; on 2 cores that two spinning OpenMP threads keep busy, each wake-up preempts one of them.
Seven idle actors beside the "main thread back in Ray's task loop" row cost it about 4% (9.30-9.60
against 8.90-9.32 s, 2 runs each); the rest of Ray Train's gap is not found.

``--openmp-lib`` adds two rows with Intel's OpenMP runtime preloaded (LD_PRELOAD, through the
Ray processes' runtime_env) in place of torch's libgomp (the table's OpenMP column says which
runtime each row ran with). On 2 cores the thread after a main-thread op gained in both runs
(0.80x vs 0.71x over 2 rounds; 0.85x vs 0.66x in a 1-round, 1-timed-epoch run), Ray Train did
not reliably (0.90x vs 0.84x; then 0.73x vs 0.79x). Not shipped: no reliable gain where it
matters, and intel-openmp is a 50 MB wheel (180 MB installed, three more packages).

    pip download --no-deps intel-openmp  # the wheel's intel_openmp-*.data/data/lib/libiomp5.so
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import allocate_as_ray_workers, allocator, machine, write  # noqa: E402
from train_throughput import CONFIGS, CORES, items_per_epoch, plain  # noqa: E402

from rnnlib.tables import table  # noqa: E402


def openmp_runtime() -> str:
    """Which OpenMP runtime this process runs torch with: Intel's when libiomp5 is loaded
    (preloaded, its GOMP_* entry points take the calls), else torch's own libgomp."""
    with open("/proc/self/maps") as f:
        return "Intel (libiomp5)" if "libiomp5" in f.read() else "GNU (libgomp)"


def main_thread_wakeups() -> int:
    """Voluntary context switches of this process's main thread so far: each time it slept and woke."""
    with open(f"/proc/self/task/{os.getpid()}/status") as f:
        return next(int(line.split(":")[1]) for line in f if line.startswith("voluntary_ctxt_switches"))


def epochs(n: int) -> tuple[list[float], int, str, float]:
    """(training seconds of epochs 2..n, optimizer steps per epoch, "torch threads, OpenMP
    runtime", wakeups a second of the process's main thread meanwhile) of train_throughput's
    forecaster workload in the calling thread, its thread count untouched."""
    from rnnlib.config import job_from_dict
    from rnnlib.tasks import make_task

    forecast = CONFIGS["forecast"]
    cfg = job_from_dict({**forecast, "train": {**forecast["train"], "epochs": n}})
    task = make_task(cfg)
    woke, start = main_thread_wakeups(), time.perf_counter()
    secs, _, threads = plain(cfg, task, threads=None)
    rate = (main_thread_wakeups() - woke) / (time.perf_counter() - start)
    return secs[1:], items_per_epoch(task, cfg)[1], f"{threads}, {openmp_runtime()}", rate


def in_thread(n: int, main_first: bool = False):
    """``epochs`` in a new thread; ``main_first``: the calling thread runs one parallel op first."""
    if main_first:
        torch.mm(torch.randn(1000, 1000), torch.randn(1000, 1000))
    out = []
    t = threading.Thread(target=lambda: out.append(epochs(n)))
    t.start()
    t.join()
    return out[0]


def preloaded(lib: str | None) -> dict:
    """Ray options that start the process with ``lib`` preloaded (LD_PRELOAD) beside the allocator
    this process preloads, or none."""
    return {"runtime_env": {"env_vars": {"LD_PRELOAD": f"{lib} {os.environ['LD_PRELOAD']}"}}} if lib else {}


def ray_actor(n: int, where: str, lib: str | None = None):
    import ray

    @ray.remote(num_cpus=CORES)
    class Runner:
        def run(self, where: str):
            return epochs(n) if where == "main" else in_thread(n, main_first=where == "thread after main op")

        def start(self):  # returns at once: the main thread goes back to Ray's task loop, as in Ray Train
            self.out = []
            self.thread = threading.Thread(target=lambda: self.out.append(epochs(n)))
            self.thread.start()

        def done(self) -> bool:
            return not self.thread.is_alive()

        def result(self):
            return self.out[0]

    actor = Runner.options(**preloaded(lib)).remote()
    try:
        if where != "thread, main idle":
            return ray.get(actor.run.remote(where))
        ray.get(actor.start.remote())
        while not ray.get(actor.done.remote()):
            time.sleep(0.5)
        return ray.get(actor.result.remote())
    finally:
        ray.kill(actor)


def _train_fn(config: dict) -> None:
    import json

    import ray.train

    Path(config["out"]).write_text(json.dumps(epochs(config["epochs"])))
    ray.train.report({"done": 1})


def ray_train(n: int, lib: str | None = None):
    """Ray Train, 1 worker; ``lib``: run from a Ray task started with it preloaded, whose
    runtime_env the controller and the worker inherit."""
    import json

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if lib:
        return ray.get(ray.remote(num_cpus=0)(ray_train).options(**preloaded(lib)).remote(n))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        TorchTrainer(_train_fn, train_loop_config={"epochs": n, "out": str(out)},
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": CORES}),
                     run_config=ray.train.RunConfig(storage_path=tmp, name="overhead")).fit()
        return tuple(json.loads(out.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every place, in a rotated order")
    ap.add_argument("--openmp-lib", help="path of Intel's OpenMP runtime (libiomp5.so, pip intel-openmp): "
                    "adds rows with it preloaded in the Ray processes in place of torch's libgomp")
    args = ap.parse_args()
    allocate_as_ray_workers()
    if args.openmp_lib:
        lib = Path(args.openmp_lib).resolve()
        if not lib.is_file():  # the loader would only warn, and the rows would measure libgomp
            print(f"--openmp-lib {args.openmp_lib}: no such file; pass the path of libiomp5.so", file=sys.stderr)
            raise SystemExit(2)
        args.openmp_lib = str(lib)  # absolute: Ray's workers start in other folders
    from jobs.ray_setup import init_ray

    init_ray(num_cpus=CORES)
    n = args.epochs
    places = {
        "this process, main thread": lambda: epochs(n),
        "this process, a second thread (the main thread ran torch first)": lambda: in_thread(n),
        "Ray actor, main thread": lambda: ray_actor(n, "main"),
        "Ray actor, a thread it starts": lambda: ray_actor(n, "thread"),
        "Ray actor, a thread, after a main-thread op": lambda: ray_actor(n, "thread after main op"),
        "Ray actor, a thread, its main thread back in Ray's task loop": lambda: ray_actor(n, "thread, main idle"),
        "Ray Train 1 worker (TrainingThread)": lambda: ray_train(n),
    }
    if args.openmp_lib:
        places |= {"Ray actor, a thread, after a main-thread op, Intel OpenMP":
                   lambda: ray_actor(n, "thread after main op", args.openmp_lib),
                   "Ray Train 1 worker, Intel OpenMP": lambda: ray_train(n, args.openmp_lib)}
    secs, steps, threads, woke = {p: [] for p in places}, 0, {}, {p: [] for p in places}
    for r in range(args.rounds):
        order = list(places)[r % len(places):] + list(places)[:r % len(places)]
        for place in order:
            s, steps, threads[place], rate = places[place]()
            secs[place] += s
            woke[place].append(rate)
            print(f"round {r + 1}: {place}: {', '.join(f'{x:.2f}' for x in s)} s", flush=True)
    base = statistics.median(secs["this process, main thread"])
    rows = [(p, threads[p], f"{statistics.median(s):.2f}", f"{1000 * statistics.median(s) / steps:.1f}",
             f"{1000 * (statistics.median(s) - base) / steps:+.1f}", f"{base / statistics.median(s):.2f}",
             f"{statistics.median(woke[p]):.0f}") for p, s in secs.items()]
    m = machine()
    print(f"\nmachine: {m['cpus']} cores, torch {m['torch']}, {allocator()} malloc; {steps} steps an epoch, "
          f"{args.epochs} epochs (first not timed), {args.rounds} rounds; median over rounds and epochs\n")
    print(table(rows, ["where the loop runs", "torch threads, OpenMP", "s/epoch", "ms/step", "ms/step vs main",
                       "x main thread", "main thread wakeups/s"]))
    out = write("train_step_overhead", {"epochs": n, "rounds": args.rounds, "steps": steps, "seconds": secs,
                                        "main_thread_wakeups_per_s": woke})
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
