"""`rnnjobs submit` / `rnnjobs jobs` against a real local Ray head (ray start --head on 127.0.0.1)."""

import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request

import pytest
from conftest import ROOT
from jobhelpers import free_port, ray_node, run, wait_for

from jobs.score import exchange_today

pytestmark = [pytest.mark.slow(seconds=90), pytest.mark.timeout(600)]


TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # this head's own token


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with token auth and its dashboard (the Job API) on 127.0.0.1 and free ports."""
    dash = free_port()
    head, _ = ray_node(tmp_path_factory.mktemp("head") / "head.log", num_cpus=2, env=TOKEN, dashboard_port=dash,
                       extra=("--include-dashboard=true",))
    address = f"http://127.0.0.1:{dash}"

    def up():  # Ray reads RAY_AUTH_MODE once, at import: ask the Job API over plain HTTP instead
        req = urllib.request.Request(f"{address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {TOKEN['RAY_AUTH_TOKEN']}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 120, "the Ray head's Job API")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(5)  # it drains for up to 30 s; a test head has nothing worth draining
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def submit(address, *args, timeout=300, env=None):
    return run("submit", "--address", address, *args, env={"RAY_ADDRESS": "", **TOKEN, **(env or {})},
               timeout=timeout)


def jobs(address, *args):
    return run("jobs", *args, "--address", address, env=TOKEN)


def job_id(stdout: str) -> str:
    return re.search(r"(?:submitted|already submitted:) (rnnjobs-\S+)", stdout).group(1)


def test_score_and_train_succeed_and_resubmitting_does_not_start_again(ray_head, tmp_path):
    t0 = time.monotonic()
    runs = tmp_path / "runs"
    train = ["train", "jobs/configs/forecast-train.yaml", "train.epochs=2", "model.hidden=8", f"storage={runs}"]
    r = submit(ray_head, *train)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stdout and "working_dir:" in r.stdout and "epoch 2/2" in r.stdout
    (model,) = runs.glob("*/model")
    assert (model / "weights.pt").is_file()
    out = tmp_path / "forecasts"
    # as_of=today is resolved here, in the exchange's time zone: the job gets the date, not "today"
    score = ["score", "jobs/configs/forecast-score.yaml", f"model={model}", f"output={out}", "actors=1", "as_of=today"]
    today = exchange_today("America/New_York")
    r = submit(ray_head, *score)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"as_of={today}" in r.stdout and "as_of=today" not in r.stdout
    assert list(out.glob(f"as_of={today}/run=*/_SUCCESS")) and list(out.glob("as_of=*/run=*/*.parquet"))
    first = job_id(r.stdout)
    again = submit(ray_head, *score, "--no-wait")
    assert again.returncode == 0 and f"already submitted: {first} is SUCCEEDED" in again.stdout
    listed = jobs(ray_head, "list")
    assert listed.stdout.count(first) == 1 and "SUCCEEDED" in listed.stdout
    print(f"train + score submitted and finished in {time.monotonic() - t0:.1f}s")


def test_stop_a_long_job(ray_head, tmp_path):
    r = submit(ray_head, "--no-wait", "train", "jobs/configs/text-train.yaml", "train.epochs=50",
               f"storage={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    jid = r.stdout.strip().splitlines()[-1]
    wait_for(lambda: "RUNNING" in jobs(ray_head, "status", jid).stdout, 120, "RUNNING")
    s = jobs(ray_head, "stop", jid)
    assert s.returncode == 0 and f"job {jid}: STOPPED" in s.stdout
    logs = jobs(ray_head, "logs", jid)
    assert logs.returncode == 0


def test_bad_config_is_not_submitted(ray_head, tmp_path):
    before = jobs(ray_head, "list").stdout
    r = submit(ray_head, "train", "jobs/configs/forecast-train.yaml", "model.cell=transformer")
    assert r.returncode == 2 and "model.cell" in r.stderr and "Traceback" not in r.stderr
    outside = tmp_path / "mine.yaml"
    outside.write_text((ROOT / "jobs/configs/forecast-train.yaml").read_text())
    r = submit(ray_head, "train", str(outside))
    assert r.returncode == 2 and "must be inside the project folder" in r.stderr
    assert jobs(ray_head, "list").stdout.count("rnnjobs-") == before.count("rnnjobs-")


def test_wrong_token_is_refused_with_the_fix(ray_head):
    r = submit(ray_head, "train", "jobs/configs/forecast-train.yaml", env={"RAY_AUTH_TOKEN": "0" * 64})
    assert r.returncode == 2 and "Set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in r.stderr
    assert "0" * 64 not in r.stdout + r.stderr


def test_unreachable_cluster_exits_3():
    r = submit(f"http://127.0.0.1:{free_port()}", "train", "jobs/configs/forecast-train.yaml", timeout=120)
    assert r.returncode == 3 and "cannot reach the Ray Job API" in r.stderr and "Traceback" not in r.stderr


def test_local_inputs_a_remote_cluster_cannot_read_are_refused(tmp_path):
    from jobs.submit import check_inputs_reachable, resolved_config
    from rnnlib.errors import UserError

    remote, local = "http://ray-head.example:8265", "http://127.0.0.1:8265"
    cases = [("train", "jobs/configs/forecast-train.yaml", [f"data.path={tmp_path}"], "data.path="),
             ("tune", "jobs/configs/forecast-tune.yaml", ["data.path=./data/histories"], "data.path="),
             ("score", "jobs/configs/forecast-score.yaml", [f"model={tmp_path}", "input=s3://bkt/h/"], "model=")]
    for command, config, overrides, key in cases:
        resolved = resolved_config(command, config, overrides)
        with pytest.raises(UserError, match=f"{key}.*cannot read.*aws s3 sync"):
            check_inputs_reachable(command, resolved, remote)
        if "./" in overrides[0]:  # relative: read inside the uploaded copy, by a local cluster too
            with pytest.raises(UserError, match="--include ./data/histories"):
                check_inputs_reachable(command, resolved, local)
        else:
            check_inputs_reachable(command, resolved, local)  # a cluster on this machine reads absolute paths
    for ok in (["data.path=s3://bkt/histories/"], ["data.path=rnnlib/datasets/stocks"], []):
        check_inputs_reachable("train", resolved_config("train", "jobs/configs/forecast-train.yaml", ok), remote)
