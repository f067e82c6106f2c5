"""The shipped cluster entrypoints run, not only parse: train, tune, score and the daily scoring
schedule from cluster/k8s/, against a moto S3 server on 127.0.0.1 whose bucket is the one the
manifests name (s3://my-bucket), holding real histories as one Parquet file per trading day.

Only what this machine cannot give is overridden: no GPU, two CPUs (so fewer actors and
trials), and short training. Everything else, configs and S3 URIs included, is as shipped."""

import io
import shlex

import pandas as pd
import pytest
from conftest import ROOT
from jobhelpers import FAKE_SECRET, run
from layouts import write_layout
from test_cluster import IMAGE_ROOT, by_kind, walk

from rnnlib import publish, storage
from rnnlib.checkpoint import open_bundle
from rnnlib.datasets import sample_stocks_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
AS_OF = "2018-01-31"


def entrypoint(manifest: str) -> list[str]:
    """The manifest's command as arguments, run from this checkout instead of the image."""
    doc = next(d for p, d in by_kind("RayJob", "RayCronJob") if p.name == manifest)
    entry = next(walk(doc, "entrypoint")).replace("as_of=today", f"as_of={AS_OF}")  # the schedule's date, fixed
    args = shlex.split(entry.replace(IMAGE_ROOT, str(ROOT) + "/"))
    assert args[0] == "rnnjobs"
    return args[1:]


@pytest.fixture(scope="module")
def bucket(moto_s3, tmp_path_factory):
    """s3://my-bucket/histories/date=YYYY-MM-DD/part-0.parquet: the bundled sample's last 400 days."""
    _, env, client = moto_s3
    client.create_bucket(Bucket="my-bucket")
    raw = {f.name.split("_")[0]: pd.read_csv(f, dtype=str).drop(columns="Name").iloc[-400:]
           for f in sorted(sample_stocks_dir().glob("*.csv"))}
    local = write_layout(raw, tmp_path_factory.mktemp("histories"), "hive_daily")
    for f in local.rglob("*.parquet"):
        client.upload_file(str(f), "my-bucket", f"histories/{f.relative_to(local).as_posix()}")
    return env


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


@pytest.mark.parametrize("manifest", ["rayjob-score.yaml", "raycronjob-score.yaml"])
def test_score_entrypoints_publish_forecasts(manifest, trained, bucket):
    args = [a for a in entrypoint(manifest) if not a.startswith("actors=")] + ["actors=2", f"model={trained}"]
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
    if "as_of" in " ".join(args):
        assert (fc["as_of"] <= pd.Timestamp(AS_OF)).all() and m["as_of"] == AS_OF
