import importlib
import os
from pathlib import Path

import pytest

# One torch thread in the test processes and in every process they start (jobs, Ray workers, the
# notebook's kernel inherit it): the RNNs here are tiny, and on a 2-core machine also running Ray
# and a second test worker, OpenMP threads spin for cores other processes hold (a GRU step measured
# 0.54 s on two threads, 0.009 s on one). The arithmetic a test compares is the same either way.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end modules first, longest first (``slow(seconds=...)``: a module's time on two
    workers on a 2-core machine, a scheduling hint), the rest in their order: on two workers (``make
    test`` runs pytest-xdist with --no-loadscope-reorder, a module per worker at a time) the long
    modules start early and the short ones fill the gaps, instead of a long module running alone at
    the end."""
    def seconds(item) -> float:
        slow = item.get_closest_marker("slow")
        return slow.kwargs.get("seconds", 60) if slow else 0

    items.sort(key=lambda item: -seconds(item))


def absent(reason: str):
    """Skip on a developer's machine; fail in CI, which has everything the tests need, so that a
    skip there cannot hide a test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (a skip in CI would hide the test)")
    pytest.skip(reason)


def optional(module: str):
    """Import a dev extra, or ``absent`` if it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        absent(f"{module} is not installed (make test installs the dev extra)")


def shared(path: str) -> Path:
    p = SHARED / path
    if not p.exists():
        absent(f"{p} is absent (../shared/data is only on development and CI machines)")
    return p


@pytest.fixture(scope="session")
def moto_s3():
    """A moto S3 server on 127.0.0.1 with a free port; yields (endpoint, env, boto3 client)."""
    import boto3
    from jobhelpers import moto_server, s3_env

    with moto_server() as endpoint:
        yield endpoint, s3_env(endpoint), boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def shared_ray(moto_s3, tmp_path_factory):
    """One Ray head (`ray start`, 127.0.0.1, 2 CPUs, the moto credentials in its environment) that
    job runs join through RAY_ADDRESS instead of each starting and stopping a Ray of its own (about
    5 s each). Only for runs that inject no fault into Ray's workers (the workers of this head do
    not see a job's environment) and do not kill their driver's Ray. Yields the env to run with."""
    from jobhelpers import kill_group, ray_node, wait_for

    env = {**moto_s3[1], "RAY_AUTH_MODE": "disabled"}  # `ray start` turns token auth on by default
    log = tmp_path_factory.mktemp("shared-ray") / "head.log"
    head, gcs = ray_node(log, num_cpus=2, env=env)
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text(), 120, "the shared Ray head")
        yield {"RAY_ADDRESS": gcs, "RAY_AUTH_MODE": "disabled"}
    finally:
        kill_group(head)
