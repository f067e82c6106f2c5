"""Running ``rnnjobs`` in a subprocess of its own session, so a test can kill the driver and
everything it started (a crashed driver host), or in this process (``cli``) where no Ray starts,
and a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from conftest import ROOT

FAKE_SECRET = "fake-secret-key-for-tests"


def rnnjobs_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *map(str, args)]


def run(*args, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    p = subprocess.Popen(rnnjobs_cmd(*args), cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        kill_group(p)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def cli(*args) -> tuple[int, str]:
    """``rnnjobs ARGS`` in this process, for commands that start no Ray: (exit code, stdout and
    stderr together), an escaping exception written out as the traceback a user would see."""
    r = cli_run(*args, merged=True)
    return r.returncode, r.stdout


def cli_run(*args, merged: bool = False) -> subprocess.CompletedProcess:
    """``rnnjobs ARGS`` in this process (no interpreter to start, torch already imported), with
    stdout and stderr apart as ``run`` gives them (or together with ``merged``)."""
    from jobs.cli import main

    out = io.StringIO()
    err = out if merged else io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)  # as ``run``: relative config paths are the project's
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # what the interpreter would print
            err.write(traceback.format_exc())
            code = 1
        finally:
            os.chdir(cwd)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), "" if merged else err.getvalue())


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def start(*args, env: dict | None = None, log: Path) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(rnnjobs_cmd(*args), cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def faults(**env: str) -> dict:
    """The environment that injects a fault (see tests/faults/sitecustomize.py) into a job's processes."""
    path = str(Path(__file__).parent / "faults")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])), **env}


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port bind(0) gives out is also given
    to outgoing connections and to the next bind(0), and a Ray head starting on one lost it to its
    own processes in the meantime (its dashboard agent: "Address already in use")."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:  # Ray's workers take 10002-19999
        port = random.randrange(20000, max(low, 30000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def ray_node(log: Path, *, head: str | None = None, num_cpus: int = 1, env: dict | None = None,
             dashboard_port: int | None = None, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``ray start --block`` on 127.0.0.1 in its own session, every port free (another Ray on the
    machine holds the defaults): a head (``head=None``; its dashboard on ``dashboard_port`` or a free
    one) or a worker node joining the head at GCS address ``head``. Returns (process, the cluster's
    GCS address). Kill the group to lose the node.

    A head keeps its files in a Ray temp dir of its own (not /tmp/ray, which every Ray on the
    machine shares): the Job API's supervisor finds the cluster a submitted driver joins from the
    head's temp dir (``RAY_ADDRESS=auto``), and /tmp/ray's ``ray_current_cluster`` names the last
    Ray started on the machine, which another test's may be (its driver then waited for ever on a
    GCS at the machine's own address)."""
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "metrics-export-port", "runtime-env-agent-port",
                                                     "node-manager-port", "object-manager-port")]
    if head is None:
        gcs = f"127.0.0.1:{free_port()}"
        role = ["--head", f"--port={gcs.split(':')[1]}", f"--ray-client-server-port={free_port()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port or free_port()}",
                f"--temp-dir={tempfile.mkdtemp(prefix='ray-')}"]  # short: its sockets' paths must fit
    else:
        gcs, role = head, [f"--address={head}"]
    from jobs.ray_setup import RAY_ENV  # as cluster/Dockerfile's ENV: our image's nodes start with it

    full = {**os.environ, **RAY_ENV, **(env or {}), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    full.pop("RAY_ADDRESS", None)
    f = open(log, "w")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                          "--disable-usage-stats", *role, *ports, *extra], env=full, stdout=f,
                         stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    return p, gcs


@contextlib.contextmanager
def moto_server(wrap=None):
    """A moto S3 server on 127.0.0.1 (a free port), its fake credentials and endpoint in this
    process's environment while it runs (boto3 and pyarrow here, and processes started here, use
    them) and restored after; yields the endpoint. ``wrap(app)``: a WSGI middleware around moto's
    app (bench/tune_requests.py counts the requests)."""
    import logging

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    class Wrapped(ThreadedMotoServer):
        def _server_entry(self) -> None:  # ThreadedMotoServer's, with the app wrapped
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server

            app = wrap(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = (Wrapped if wrap else ThreadedMotoServer)(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = s3_env(endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def s3_env(endpoint: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}
