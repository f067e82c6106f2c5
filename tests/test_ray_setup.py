"""What every Ray worker process of our jobs runs first (jobs.ray_setup.setup_worker)."""

import json
import logging
import os
import subprocess
import sys

import pytest

from jobs.ray_setup import (
    CLEANER_STOP,
    NO_CPU,
    ONE_TASK_POOL,
    RAY_ENV,
    WORKER_MALLOC,
    DropMessages,
    init_ray,
    no_false_cpu_alarm,
)


def test_worker_log_filter_drops_only_the_cleaner_stop_report():
    def record(msg):
        return logging.LogRecord("ray.train", logging.ERROR, __file__, 1, msg, (), None)

    f = DropMessages(*CLEANER_STOP)
    assert not f.filter(record("Failed to stop PlacementGroupCleaner gracefully."))
    assert not f.filter(record("Monitor thread did not exit within %.2f seconds"))
    assert f.filter(record("Failed to clean up placement group: boom"))
    assert f.filter(record("Detected that the Ray Train controller actor (x) is dead."))


@pytest.mark.parametrize("free_cpus, shown", [({"CPU": 2.0}, False), ({}, True)])
def test_no_false_cpu_alarm_keeps_the_warning_when_no_cpu_is_free(monkeypatch, free_cpus, shown):
    """Ray Data's "will hang" warning is dropped around a materialize that starts with a free CPU
    (its check after the tasks end is a false alarm), kept when the cluster is full from the start;
    other warnings pass, and nothing is dropped once the block ends."""
    import ray

    monkeypatch.setattr(ray, "available_resources", lambda: free_cpus)
    log, seen = logging.getLogger("ray.data.dataset"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)  # Ray Data's loggers do not propagate to the root (caplog)
    try:
        with no_false_cpu_alarm():
            log.warning(NO_CPU + ". The Dataset job will hang unless more CPUs are freed up.")
            log.warning("something else")
        log.warning(NO_CPU + " (after)")
    finally:
        log.removeHandler(handler)
    assert any(m.endswith("freed up.") for m in seen) == shown
    assert "something else" in seen and NO_CPU + " (after)" in seen


def test_jobs_run_ray_datas_shuffle_tasks_in_one_worker_pool(monkeypatch):
    """The job's runtime env carries both of Ray Data's shuffle pool markers, so that read, map and
    reduce tasks share worker processes; a Ray upgrade that changes Ray's must change ours. A key
    the submitted job's runtime env sets already is left to it."""
    import ray
    from ray.data._internal.execution.operators.hash_shuffle_v2 import _SHUFFLE_MAP_RUNTIME_ENV
    from ray.data._internal.execution.operators.shuffle_operators.shuffle_reduce_operator import (
        _SHUFFLE_REDUCE_RUNTIME_ENV,
    )

    assert ONE_TASK_POOL == {**_SHUFFLE_MAP_RUNTIME_ENV["env_vars"], **_SHUFFLE_REDUCE_RUNTIME_ENV["env_vars"]}
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(os, "environ", {"RAY_ADDRESS": "127.0.0.1:1"})  # init_ray sets RAY_ENV in it
    init_ray()
    assert calls[-1]["runtime_env"]["env_vars"] == {**RAY_ENV, **ONE_TASK_POOL, **WORKER_MALLOC}
    job = {"runtime_env": {"env_vars": {"RAY_DATA_SHUFFLE_MAP_WORKER": "1"}}}
    os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(job)
    init_ray()
    assert "RAY_DATA_SHUFFLE_MAP_WORKER" not in calls[-1]["runtime_env"]["env_vars"]
    assert calls[-1]["runtime_env"]["env_vars"]["RAY_DATA_SHUFFLE_REDUCE_WORKER"] == "1"


STEPS = """
import json, ray, torch
from jobs.ray_setup import init_ray

def steps():  # minor page faults of steps 4-6 of an LSTM (the forecaster's shape), and the allocator
    def faults():
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    torch.manual_seed(0)
    lstm, x = torch.nn.LSTM(5, 64, 2, batch_first=True), torch.randn(256, 60, 5)
    for i in range(6):
        if i == 3:
            before = faults()
        lstm(x)[0].sum().backward()
    with open("/proc/self/maps") as f:
        return faults() - before, "libjemalloc" in f.read()

init_ray(num_cpus=1)
print(json.dumps({"driver": steps(), "worker": ray.get(ray.remote(steps).remote())}))
"""


def test_ray_workers_keep_the_memory_a_training_step_frees():
    """A local job's Ray workers allocate with Ray's jemalloc and keep the pages a training step
    frees: three more steps fault in (almost) nothing. The driver, on glibc, faults in some 50,000
    pages (so the probe sees them); so did workers on glibc, and on jemalloc's default decay 84,000."""
    env = {k: v for k, v in os.environ.items() if k not in (*RAY_ENV, *WORKER_MALLOC, "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    (driver_faults, driver_jemalloc), (worker_faults, worker_jemalloc) = got["driver"], got["worker"]
    assert not driver_jemalloc and driver_faults >= 20_000, got
    assert worker_jemalloc and worker_faults < 2_000, got
