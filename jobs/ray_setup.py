"""Starting or joining Ray, quietly. The only place the jobs call ``ray.init``."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager

# Set for every Ray process of a job: here before a local ray.init, in the runtime_env of a
# submitted job (jobs/submit.py), and as ENV in cluster/Dockerfile.
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # Train V2 re-logs every worker print() through its logger, which shows each line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Tune trials keep the job's working directory, so relative data paths mean the same in a trial.
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # Train V2's controller polls its workers every 2 s (its default) and takes one report a poll; a
    # worker's report waits in a queue of one (v2/_internal/execution/context.py), so every epoch
    # shorter than 2 s took 2 s: forecast-train.yaml on the bundled sample, 0.5 s of training an
    # epoch, ran epochs 1 to 8 in 10.9 s, in 3.65 s polled every 0.5 s, in 3.2 s every 0.2 s (same
    # losses). 0.5 s, as the 4.6-5 s epochs of bench/train_throughput.py's forecaster took 4.69 s
    # (median, 12 epochs) polled every 0.5 s, 4.91 s every 2 s and 5.02 s every 0.2 s (ad-hoc, noisy).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray starts its own processes (the raylet, GCS) with the jemalloc its wheel ships
    # (ray/core/libjemalloc.so, LD_PRELOAD: ray/_private/services.py); with this set the raylet
    # passes it on to the worker processes it starts. WORKER_MALLOC says why.
    "RAY_LD_PRELOAD_ON_WORKERS": "1",
}
# Worker processes only (the job's runtime_env; Ray's own keep jemalloc's defaults): keep the pages
# a process frees for its next allocations. PyTorch's CPU allocator caches nothing, and a training
# step frees tens of MB of activations that the next step allocates again (the forecaster of
# bench/train_throughput.py). glibc gave them back to the kernel (munmap; a thread's arena deletes
# its 64 MB heaps), and every page faulted in again, zeroed: 1.5-2.5 million minor faults an
# epoch, about half its time, and more or fewer with each process's allocation history (Ray Train
# 0.78-1.0x the plain loop). glibc's tunables (MALLOC_TOP_PAD_ and the like) stopped it in some
# processes and not in a Ray actor's; jemalloc's default decay purges them as well, and
# dirty_decay_ms:-1 never does: an epoch then faults a few hundred pages (bench/train_allocator.py).
# The cost: a worker's resident memory stays at its peak until the process ends.
WORKER_MALLOC = {"MALLOC_CONF": "dirty_decay_ms:-1"}
# Ray Data 2.60 marks its shuffle's map and reduce tasks with runtime envs of their own, each a
# separate pool of worker processes (hash_shuffle_v2.py _SHUFFLE_MAP_RUNTIME_ENV,
# shuffle_operators/shuffle_reduce_operator.py _SHUFFLE_REDUCE_RUNTIME_ENV): each started new
# processes (about 1 CPU-second each to import Ray, pyarrow and jobs.score) after the read tasks'
# had. Both markers are in the job's runtime env, and the long layout's read tasks name them in
# a runtime_env of their own too: Ray merges a task's env into the job's, and the merged env,
# serialized, differs from the inherited one (2.60: only in its JSON spacing, but a different
# pool). So the read, map and reduce tasks share one pool: a daily-layout backtest job on 2 CPUs
# took 11.9 s against 13.9 s (medians of 6, ad-hoc A/B), its peak RSS unchanged (3,408-3,415 MB
# against 3,416-3,433 MB). tests/test_ray_setup.py checks the markers still match Ray's, and
# test_score_job.py that the three kinds of task ran with one runtime env.
ONE_TASK_POOL = {"RAY_DATA_SHUFFLE_MAP_WORKER": "1", "RAY_DATA_SHUFFLE_REDUCE_WORKER": "1"}


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (or the job's cluster), else start a local Ray.

    Ray's own INFO logging adds nothing for a user of these jobs; warnings stay. The local
    dashboard stays on (127.0.0.1 only): Ray Train's placement-group cleaner needs its State API.
    Every worker process of the job runs ``setup_worker`` first (the runtime_env's setup hook;
    a submitted job's own runtime_env is merged with it).
    """
    import ray

    if ray.is_initialized():
        return
    for key, value in {**RAY_ENV, "RAY_DEDUP_LOGS": "1"}.items():
        os.environ.setdefault(key, value)
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True,
              "runtime_env": {"worker_process_setup_hook": "jobs.ray_setup.setup_worker"}}
    # A cluster joined through RAY_ADDRESS started its workers without this process's environment
    # (a local Ray inherits it): pass RAY_ENV on, and ONE_TASK_POOL and WORKER_MALLOC, except the
    # keys a submitted job's own runtime_env sets already (submit passes RAY_ENV; Ray refuses a
    # driver's env var the job also sets).
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    taken = (job.get("runtime_env") or {}).get("env_vars") or {}
    if env_vars := {k: v for k, v in {**RAY_ENV, **ONE_TASK_POOL, **WORKER_MALLOC}.items() if k not in taken}:
        kwargs["runtime_env"]["env_vars"] = env_vars
    if not os.environ.get("RAY_ADDRESS"):
        # "local": a fresh Ray for this job, even if `ray start` left a cluster running on this machine
        kwargs.update(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1")
    ray.init(**kwargs)
    logging.getLogger("ray").setLevel(logging.WARNING)
    import ray.data  # noqa: F401  (configures its logger on import; quiet it afterwards)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-operator progress lines


def quiet_train_worker() -> None:
    """Inside a Train worker: drop the per-report INFO line, whose logger is named by file path
    (outside ``ray.train``, so RunConfig's LoggingConfig does not reach it)."""
    try:
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # internal layout changed: only noise is lost
        pass


def quiet_tune_trial() -> None:
    """Inside a Tune trial: drop the INFO line logged for every checkpoint persisted."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def setup_worker() -> None:
    """Runs first in every Ray worker process of our jobs (``worker_process_setup_hook``).

    Pin the State API to this cluster. Ray Train's PlacementGroupCleaner asks the State API
    every second whether the TrainController is alive, and the State API finds "the" cluster
    by auto-detection: ``RAY_ADDRESS``, else ``/tmp/ray/ray_current_cluster``, which the last
    ``ray start`` on the machine wrote and ``ray stop`` does not always remove. A stale file
    made each check hang 40 s (then a 12 s stop timeout and a 30-line ``GetTimeoutError``
    traceback at the end of every successful run); a live ``ray start`` cluster beside a local
    job would answer "no such actor", and the cleaner would remove the running job's placement
    group. This process is connected, so its own GCS address is the right answer.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    for name in ("ray.train.v2._internal.callbacks.placement_group_callback",
                 "ray.train.v2._internal.execution.controller.placement_group_cleaner"):
        logging.getLogger(name).addFilter(DropMessages(*CLEANER_STOP))


class DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of ``prefixes``, and only those."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Ray Train's stop-timeout report for its PlacementGroupCleaner. When a run ends, the controller
# stops the cleaner with a timeout of 2 x 1 s + 10 s, while the cleaner's monitor thread can be
# inside a State API call for up to 10 s + its 1 s poll; when the State API is slow the stop times
# out, and Ray logs "Monitor thread did not exit" and a ``GetTimeoutError`` traceback from
# ``logger.exception``. The run has ended well by then and its placement group is already removed;
# the cleaner only guards against a controller that dies. Upstream: ray-project/ray#62516 (its
# review notes the stop timeout shorter than the monitor's worst case); remove this filter when
# Ray's timeouts agree.
CLEANER_STOP = ("Failed to stop PlacementGroupCleaner gracefully", "Monitor thread did not exit")

NO_CPU = "Warning: The Ray cluster currently does not have any available CPUs"


@contextmanager
def no_false_cpu_alarm():
    """Around ``Dataset.materialize()``: drop Ray Data's warning that the cluster has no free CPU
    and the job "will hang unless more CPUs are freed up". materialize checks again once its
    tasks have ended (Ray 2.60: the result's ``_execute``), while Ray's resource view still counts
    them for some 50 ms: the long layout's shuffle on 2 CPUs drew the warning in 2 of 3 jobs. With
    no free CPU before it starts, the warning is true, and it is left alone."""
    import ray

    if not ray.available_resources().get("CPU"):
        yield
        return
    logger, drop = logging.getLogger("ray.data.dataset"), DropMessages(NO_CPU)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
