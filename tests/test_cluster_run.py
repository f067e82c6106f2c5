"""The shipped cluster entrypoints run, not only parse: train, tune, score, the weekly
retrain-and-gate and the daily scoring schedule (score the champion, then the scorecard) from
cluster/k8s/, against a moto S3 server on 127.0.0.1 whose bucket is the one the manifests name
(s3://my-bucket), holding real histories as one Parquet file per trading day.

Only what this machine cannot give is overridden: no GPU, two CPUs (so fewer actors and
trials), and short training. Everything else, configs and S3 URIs included, is as shipped."""

import io
import json

import pandas as pd
import pytest
from conftest import ROOT
from jobhelpers import FAKE_SECRET, run
from layouts import write_layout
from test_cluster import IMAGE_ROOT, by_kind, commands, job_env, walk

from rnnlib import publish, storage
from rnnlib.checkpoint import open_bundle
from rnnlib.datasets import sample_stocks_dir
from rnnlib.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
AS_OF = "2018-01-31"


def chain(manifest: str) -> list[list[str]]:
    """The manifest's commands (a chain joined by &&: each runs if the one before succeeded), each as
    the arguments of rnnjobs, run from this checkout instead of the image."""
    doc = next(d for p, d in by_kind("RayJob", "RayCronJob") if p.name == manifest)
    entry = next(walk(doc, "entrypoint")).replace("as_of=today", f"as_of={AS_OF}")  # the schedule's date, fixed
    out = commands(entry.replace(IMAGE_ROOT, str(ROOT) + "/"), chain=False)
    assert all(args[0] == "rnnjobs" for args in out)
    return [args[1:] for args in out]


def entrypoint(manifest: str) -> list[str]:
    (args,) = chain(manifest)
    return args


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


# Only what this machine cannot give (8 CPUs for 2 workers x 4) and time: one epoch. seed=1 makes the
# run a new one: the train test above trains the same config on the same data (its run name would be
# found finished, and this test is about a run that trains).
RETRAIN = ["scaling.workers=1", "scaling.cpus_per_worker=1", "train.epochs=1", "train.seed=1"]


def _objects(client, prefix: str) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="my-bucket", Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def released(bucket, moto_s3):
    """The weekly retrain-and-gate entrypoint run twice: (first stdout, second stdout, what the
    second run changed in the bucket)."""
    client = moto_s3[2]
    first = _ok(run(*entrypoint("raycronjob-retrain.yaml"), *RETRAIN, env=bucket, timeout=600)).stdout
    before = _objects(client, "")
    second = _ok(run(*entrypoint("raycronjob-retrain.yaml"), *RETRAIN, env=bucket, timeout=600)).stdout
    after = _objects(client, "")
    return first, second, {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_weekly_retrain_trains_registers_gates_and_promotes_then_a_rerun_changes_nothing(released):
    first, second, changed = released
    assert "trained 1 epoch(s)" in first and "already finished" not in first
    assert "registered forecaster version 1 (models://forecaster/1)" in first
    assert "gate: forecaster version 1 against persistence (forecaster@champion is not set)" in first
    assert "PROMOTED: forecaster@champion -> version 1" in first, first[-3000:]
    reg = Registry("s3://my-bucket/models")
    assert reg.alias_target("forecaster", "champion")["version"] == 1
    assert [v["version"] for v in reg.versions("forecaster")] == [1]
    (gate,) = reg.notes("forecaster", 1, "gates")
    assert gate["promote"] is True and gate["champion"] is None and gate["histories"] == "s3://my-bucket/histories/"
    assert gate["figures"]["candidate"]["rmae"] <= 1.02 and gate["series"] == 25  # APTV too short for 60 days
    # the rerun on the same data: the finished run, the version with its weights and its gate record
    assert "already finished" in second and "trained 1 epoch" not in second
    assert "already registered: forecaster version 1 holds these weights" in second
    assert "already gated: forecaster version 1 was promoted" in second
    assert not changed, sorted(changed)[:10]  # not one object written, moved or removed


def test_daily_chain_scores_the_champion_publishes_by_date_and_runs_the_scorecard(released, bucket):
    score, scorecard = chain("raycronjob-score.yaml")
    assert score[0] == "score" and scorecard[0] == "scorecard"
    env = {**bucket, **job_env("raycronjob-score.yaml")}  # RNNJOBS_REGISTRY from the manifest's runtime env
    r = _ok(run(*[a for a in score if not a.startswith("actors=")], "actors=2", env=env, timeout=600))
    assert "model models://forecaster@champion (version 1: s3://my-bucket/models/forecaster/1/" in r.stdout
    run_uri = next(w for w in r.stdout.split() if w.startswith(f"s3://my-bucket/forecasts/as_of={AS_OF}/run="))
    _, m = publish.read_manifest(run_uri)
    assert publish.verify(run_uri).ok and m["as_of"] == AS_OF and m["counts"]["series_scored"] == 26
    assert m["model"]["registry"] == {"ref": "models://forecaster@champion", "name": "forecaster", "version": 1}
    assert m["model"]["uri"].startswith("s3://my-bucket/models/forecaster/1/")
    pointer = json.loads(storage.read_bytes(f"s3://my-bucket/forecasts/as_of={AS_OF}/{publish.LATEST}"))
    assert storage.join(f"s3://my-bucket/forecasts/as_of={AS_OF}", pointer["run"]) == run_uri
    assert storage.exists(f"s3://my-bucket/forecasts/{publish.LATEST}")
    fc = publish.read_kind(run_uri)
    assert len(fc) == 26 * 5 and (fc["as_of"] <= pd.Timestamp(AS_OF)).all()

    r = _ok(run(*scorecard, env=env, timeout=300))
    out = "s3://my-bucket/forecasts/scorecard"
    for name in ("by_date.parquet", "by_date_step.parquet", "by_ticker.parquet", "points.parquet", "scorecard.png",
                 "report.md"):
        assert storage.exists(storage.join(out, name)), name
    by_date = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(out, "by_date.parquet"))))
    (day,) = by_date[by_date["as_of"].astype(str).str[:10] == AS_OF].itertuples()
    assert m["run_id"] in str(day.run) and day.points == 26 * 5
    assert day.scored == 26 * 5 and day.pending == 0  # the histories run a week past AS_OF: every step realized
    assert 0 < day.rmae < 2 and 0 <= day.coverage <= 1
