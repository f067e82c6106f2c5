import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared" / "data"


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
    import os

    import boto3
    from jobhelpers import s3_env
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = s3_env(endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # boto3 and pyarrow in this process use the fake credentials too
    client = boto3.client("s3", endpoint_url=endpoint)
    yield endpoint, env, client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
