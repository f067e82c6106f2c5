"""The shipped cluster entrypoints run, not only parse: train, tune and score from cluster/k8s/
(the weekly retrain-and-gate and the daily schedule run for two simulated weeks in
test_daily_loop.py), against a moto S3 server on 127.0.0.1 whose bucket is the one the manifests name
(s3://my-bucket), holding real histories as one Parquet file per trading day.

Only what this machine cannot give is overridden: no GPU, two CPUs (so fewer actors and
trials), and short training. Everything else, configs and S3 URIs included, is as shipped."""

import io

import pandas as pd
import pytest
from conftest import ROOT
from jobhelpers import FAKE_SECRET, run
from layouts import read_per_ticker, write_layout
from test_cluster import IMAGE_ROOT, by_kind, commands, walk

from rnnlib import publish, storage
from rnnlib.bundle import open_bundle
from rnnlib.datasets import sample_stocks_dir

pytestmark = [pytest.mark.slow(seconds=115), pytest.mark.timeout(900)]
AS_OF = "2018-01-31"


def chain(manifest: str, as_of: str = AS_OF) -> list[list[str]]:
    """The manifest's commands (a chain joined by &&: each runs if the one before succeeded), each as
    the arguments of rnnjobs, run from this checkout instead of the image, on the day ``as_of``."""
    doc = next(d for p, d in by_kind("RayJob", "RayCronJob") if p.name == manifest)
    entry = next(walk(doc, "entrypoint")).replace("as_of=today", f"as_of={as_of}")  # the schedule's date, fixed
    out = commands(entry.replace(IMAGE_ROOT, str(ROOT) + "/"), chain=False)
    assert all(args[0] == "rnnjobs" for args in out)
    return [args[1:] for args in out]


def entrypoint(manifest: str) -> list[str]:
    (args,) = chain(manifest)
    return args


@pytest.fixture(scope="module")
def bucket(moto_s3, shared_ray, tmp_path_factory):
    """s3://my-bucket/histories/date=YYYY-MM-DD/part-0.parquet: the bundled sample's last 400 days.
    Returns the env the jobs run with: the moto credentials and the session's shared Ray."""
    _, env, client = moto_s3
    client.create_bucket(Bucket="my-bucket")
    raw = {t: df.iloc[-400:] for t, df in read_per_ticker(sorted(sample_stocks_dir().glob("*.csv"))).items()}
    local = write_layout(raw, tmp_path_factory.mktemp("histories"), "hive_daily")
    for f in local.rglob("*.parquet"):
        client.upload_file(str(f), "my-bucket", f"histories/{f.relative_to(local).as_posix()}")
    return {**env, **shared_ray}


def _ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert FAKE_SECRET not in r.stdout + r.stderr
    assert "Traceback" not in r.stdout
    return r


def _model_uri(stdout: str, prefix: str) -> str:
    uri = next(w for line in stdout.splitlines() for w in line.split() if w.startswith(prefix) and
               w.rstrip("/.,").endswith("/model"))
    return uri.rstrip("/.,")


@pytest.fixture(scope="module")
def trained(bucket):
    args = entrypoint("rayjob-train.yaml") + ["scaling.gpu=false", "train.epochs=1"]
    r = _ok(run(*args, env=bucket, timeout=600))
    model = _model_uri(r.stdout, "s3://my-bucket/runs/")
    return model


def test_train_entrypoint_reads_s3_partitions_and_exports(trained, bucket):
    b = open_bundle(trained, task="forecast")
    assert len(b.transforms) == 25  # 26 tickers; APTV (44 rows) too short to window and split
    assert b.data["window"] == 30


def test_tune_entrypoint_exports_the_best_trial(bucket):
    args = entrypoint("rayjob-tune.yaml") + ["tune.num_samples=2", "tune.max_concurrent_trials=2", "train.epochs=1"]
    r = _ok(run(*args, env=bucket, timeout=600))
    model = _model_uri(r.stdout, "s3://my-bucket/tune/")
    assert open_bundle(model, task="forecast").data["window"] in (10, 20, 30, 60)  # the shipped search space


def test_score_entrypoint_publishes_forecasts(trained, bucket):
    """The one-off score job, with a model named by its URI (the daily schedule's chain, scoring the
    champion, is tested below)."""
    args = [a for a in entrypoint("rayjob-score.yaml") if not a.startswith("actors=")]
    args += ["actors=2", f"model={trained}"]
    r = _ok(run(*args, env=bucket, timeout=600))
    assert "(long layout)" in r.stdout
    run_uri = next(w for w in r.stdout.split() if w.startswith("s3://my-bucket/forecasts/as_of="))
    _, m = publish.read_manifest(run_uri)
    assert publish.verify(run_uri).ok
    assert m["counts"]["files"] == 400 and m["counts"]["series_scored"] == 26
    parts = [pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(run_uri, f["path"]))))
             for f in m["files"] if f["kind"] == "forecasts"]
    fc = pd.concat(parts)
    assert len(fc) == 26 * 5 and not fc.duplicated(["ticker", "step"]).any()
