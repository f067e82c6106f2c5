"""Six simulated trading days of the shipped schedules, as the cluster runs them: the weekly
retrain-and-gate (cluster/k8s/raycronjob-retrain.yaml) and the daily chain (raycronjob-score.yaml:
score models://forecaster@champion as of the day, then the scorecard), their commands taken from the
manifests with the bucket renamed, on a moto S3 server (127.0.0.1) and a two-node local Ray (two
`ray start` processes). Daily partitions of the bundled histories arrive one trading day at a time.
The first retrain promotes version 1 against persistence; its rerun on the same data changes not one
object. Mid-way a retrain on the new data runs and its gate decides; a deliberately worse candidate
is refused and the champion stays; the worker node is killed during one day's scoring (that day
still publishes exactly once, every row once); rerunning a day publishes nothing new. The
scorecard's figures equal a direct computation from the published forecasts and the later prices.

Overridden, as in test_cluster_run.py, only what this machine cannot give: 2 CPUs (1 Train
worker, 2 scoring actors) and time (2 epochs)."""

import io
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from jobhelpers import FAKE_SECRET, cli, kill_group, ray_node, run, start, wait_for
from test_cluster import job_env
from test_cluster_run import chain

from rnnlib import publish, storage
from rnnlib.bundle import open_bundle, save_bundle
from rnnlib.datasets import sample_stocks_dir
from rnnlib.registry import Registry

pytestmark = [pytest.mark.slow(seconds=300), pytest.mark.timeout(1500)]

BUCKET = "s3://loop"
HISTORIES, OUT, REGISTRY = f"{BUCKET}/histories", f"{BUCKET}/forecasts", f"{BUCKET}/models"
DAYS = 6  # a retrain mid-way, a node lost the day after, forecasts 5 days ahead scored by the last


# The shipped configs name s3://my-bucket inside them: overridden to this test's bucket
MOVED = {"train": [f"data.path={HISTORIES}/", f"storage={BUCKET}/runs", f"release.registry={REGISTRY}"],
         "score": [f"input={HISTORIES}/", f"output={OUT}"], "scorecard": []}


def shipped(args: list[str]) -> list[str]:
    """A manifest's command with the manifests' bucket renamed to this test's."""
    return [a.replace("s3://my-bucket", BUCKET) for a in args] + MOVED[args[0]]


(RETRAIN,) = chain("raycronjob-retrain.yaml")
RETRAIN = shipped(RETRAIN) + ["scaling.workers=1", "scaling.cpus_per_worker=1", "train.epochs=2"]


def daily(day: str) -> tuple[list[str], list[str]]:
    score, scorecard = (shipped(c) for c in chain("raycronjob-score.yaml", as_of=day))
    return [a for a in score if not a.startswith("actors=")] + ["actors=2"], scorecard


def _frame() -> pd.DataFrame:
    """The bundled histories' last 300 rows per ticker, as one long table."""
    parts = [pd.read_csv(f).iloc[-300:].assign(ticker=f.name.split("_")[0])
             for f in sorted(sample_stocks_dir().glob("*.csv"))]
    return pd.concat(parts, ignore_index=True).drop(columns="Name")


@pytest.fixture(scope="module")
def loop(moto_s3, tmp_path_factory):
    """The bucket with the history up to the day before the simulated days, and a two-node Ray."""
    _, env, s3 = moto_s3
    s3.create_bucket(Bucket="loop")
    df = _frame()
    days = sorted(df["date"].unique())[-DAYS:]
    base = df[df["date"] < days[0]]
    buf = io.BytesIO()
    base.to_parquet(buf, index=False)
    s3.put_object(Bucket="loop", Key="histories/base/prices.parquet", Body=buf.getvalue())
    logs = tmp_path_factory.mktemp("ray")
    env = {**env, "RAY_AUTH_MODE": "disabled"}  # `ray start` turns token auth on by default since Ray 2.5x
    head, gcs = ray_node(logs / "head.log", num_cpus=2, env=env)
    worker, _ = ray_node(logs / "worker.log", head=gcs, num_cpus=2, env=env)
    nodes = {"head": head, "worker": worker}
    try:
        wait_for(lambda: alive_nodes(gcs, env) == 2, 120, "a two-node Ray")
        manifest_env = {k: v.replace("s3://my-bucket", BUCKET) for k, v in job_env("raycronjob-score.yaml").items()}
        assert manifest_env == {"RNNJOBS_REGISTRY": REGISTRY}
        yield {"env": {**env, "RAY_ADDRESS": gcs, **manifest_env}, "s3": s3, "df": df,
               "days": days, "nodes": nodes, "gcs": gcs, "logs": logs}
    finally:
        for p in nodes.values():
            kill_group(p)


def alive_nodes(gcs: str, env: dict) -> int:
    probe = (f"import ray; ray.init(address={gcs!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=60)
    return int(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else 0


def arrive(loop, day: str) -> None:
    """One day's partition lands: date only in the folder name (a Hive key), a symbol column."""
    part = loop["df"][loop["df"]["date"] == day].drop(columns="date").rename(columns={"ticker": "symbol"})
    buf = io.BytesIO()
    part.to_parquet(buf, index=False)
    loop["s3"].put_object(Bucket="loop", Key=f"histories/date={day}/part-0.parquet", Body=buf.getvalue())


def ok(r, *expected):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert FAKE_SECRET not in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    for e in expected:
        assert e in r.stdout, (e, r.stdout[-3000:])
    return r


def runs_of(day: str) -> list[str]:
    found = storage.list_files(f"{OUT}/as_of={day}", recursive=True)
    return sorted({u.rsplit("/", 1)[0] for u, _, _ in found if u.endswith("/_SUCCESS")})


def worse_than(champion_uri: str, tmp) -> str:
    """The champion with noise on every weight: a deliberately worse candidate."""
    b = open_bundle(champion_uri, task="forecast")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(torch.randn_like(p))
    data = {k: v for k, v in b.data.items()}
    return str(save_bundle(tmp / "worse", b.model, task="forecast", model_args=b.meta["model"]["args"], data=data,
                           transforms=b.transforms))


def gate_lines(stdout: str) -> str:
    """What a gate printed: from its 'gate:' line to its 'decision:' line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("gate: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("decision: "))
    return "\n".join(lines[start:end])


def objects(s3) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="loop")
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_six_days_of_the_shipped_schedules(loop, tmp_path):
    env, days, reg = loop["env"], loop["days"], Registry(REGISTRY)
    timings = {}
    t0 = time.monotonic()
    first = ok(run(*RETRAIN, env=env, timeout=600), "trained 2 epoch(s)",
               "registered forecaster version 1 (models://forecaster/1)",
               "gate: forecaster version 1 against persistence (forecaster@champion is not set)",
               "PROMOTED: forecaster@champion -> version 1")
    timings["retrain + gate (day 0)"] = time.monotonic() - t0
    first_run = re.search(r"^run (\S+):", first.stdout, re.M).group(1)
    gates = [gate_lines(first.stdout)]
    (gate,) = reg.notes("forecaster", 1, "gates")
    assert gate["promote"] is True and gate["champion"] is None and gate["histories"] == f"{HISTORIES}/"
    assert gate["figures"]["candidate"]["rmae"] <= 1.02 and gate["series"] == 25  # APTV: too short for 60 days
    # a retry on the same data: the finished run, the version holding its weights, its gate record
    before = objects(loop["s3"])
    again = ok(run(*RETRAIN, env=env, timeout=600), "already finished",
               "already registered: forecaster version 1 holds these weights",
               "already gated: forecaster version 1 was promoted")
    assert "trained 2 epoch" not in again.stdout and objects(loop["s3"]) == before  # not one object changed

    table = []
    for k, day in enumerate(days, 1):
        arrive(loop, day)
        if k == 3:  # mid-way: the weekly retrain on the data that arrived since
            t = time.monotonic()
            r = ok(run(*RETRAIN, env=env, timeout=600), "registered forecaster version 2",
                   "gate: forecaster version 2")
            timings["retrain + gate"] = time.monotonic() - t
            assert re.search(r"^run (\S+):", r.stdout, re.M).group(1) != first_run  # new data, a new run
            gates.append(gate_lines(r.stdout))
            promoted = "PROMOTED: forecaster@champion -> version 2" in r.stdout
            assert promoted != ("REFUSED" in r.stdout)
            champion = reg.alias_target("forecaster", "champion")["version"]
            assert champion == (2 if promoted else 1)
            (decision,) = reg.notes("forecaster", 2, "gates")
            assert decision["promote"] == promoted and decision["champion"] == 1
            c, ch = decision["figures"]["candidate"], decision["figures"]["champion"]
            assert promoted == (c["rmae"] <= ch["rmae"] and c["pinball"] <= ch["pinball"]
                                and c["rmae"] <= 1.02 * decision["figures"]["persistence"]["rmae"]
                                and c["pinball"] <= decision["figures"]["persistence"]["pinball"])

            worse = worse_than(reg.bundle_uri("forecaster", champion), tmp_path)
            code, out = cli("models", "register", "forecaster", worse, "--registry", REGISTRY)
            assert code == 0 and "version 3" in out, out
            code, out = cli("models", "gate", "forecaster", "3", "--histories", f"{HISTORIES}/", "--registry",
                            REGISTRY)
            assert code == 1 and "REFUSED" in out and f"forecaster@champion stays version {champion}" in out, out
            gates.append(gate_lines(out))
            assert reg.alias_target("forecaster", "champion")["version"] == champion

        score, scorecard = daily(day)
        t = time.monotonic()
        if k == 4:  # the worker node dies while this day is being scored
            p = start(*score, env=env, log=tmp_path / "score.log")
            try:
                wait_for(lambda folder=f"{OUT}/as_of={day}": storage.list_files(folder, recursive=True,
                                                                                 missing_ok=True),
                         300, "the first scored part")
                kill_group(loop["nodes"]["worker"])
                assert p.wait(600) == 0, (tmp_path / "score.log").read_text()[-3000:]
            finally:
                kill_group(p)
            assert "published" in (tmp_path / "score.log").read_text()
            loop["nodes"]["worker"], _ = ray_node(loop["logs"] / "worker2.log", head=loop["gcs"], num_cpus=2,
                                                  env={k: v for k, v in env.items() if k != "RAY_ADDRESS"})
        else:
            r = ok(run(*score, env=env, timeout=600), "published")
            if k == 1:
                assert f"model models://forecaster@champion (version 1: {REGISTRY}/forecaster/1/" in r.stdout
        timings.setdefault("score, per day", []).append(time.monotonic() - t)
        t = time.monotonic()
        ok(run(*scorecard, env=env, timeout=300))
        timings.setdefault("scorecard, per day", []).append(time.monotonic() - t)

        (run_uri,) = runs_of(day)  # exactly one published run for the day
        assert publish.verify(run_uri).ok and publish.resolve(OUT) == run_uri
        _, m = publish.read_manifest(run_uri)
        assert m["as_of"] == day and m["model"]["registry"]["ref"] == "models://forecaster@champion"
        assert m["model"]["uri"].startswith(f"{REGISTRY}/forecaster/{m['model']['registry']['version']}/")
        f = publish.read_kind(run_uri)
        assert not f.duplicated(["ticker", "step"]).any()
        assert len(f) == m["counts"]["forecast_rows"] == 5 * m["counts"]["series_scored"]
        assert m["counts"]["series_in"] == m["counts"]["series_scored"] + m["counts"]["series_rejected"] == 26
        assert (f["as_of"] <= pd.Timestamp(day)).all() and (f["as_of"] == pd.Timestamp(day)).mean() > 0.9
        by_date = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{OUT}/scorecard/by_date.parquet")))
        last = by_date[by_date["scored"] > 0].tail(1)
        table.append([day, m["model"]["registry"]["version"], len(f),
                      float(last["rmae"].iloc[0]) if len(last) else float("nan"),
                      float(last["coverage"].iloc[0]) if len(last) else float("nan")])

    # rerunning a day publishes nothing new
    before = runs_of(days[-1])
    ok(run(*daily(days[-1])[0], env=env, timeout=600), "already published")
    assert runs_of(days[-1]) == before

    # the scorecard equals a direct computation from the forecasts and the prices that came later
    df = loop["df"].assign(date=lambda d: pd.to_datetime(d["date"]))
    card = f"{OUT}/scorecard"
    for name in ("by_date.parquet", "by_date_step.parquet", "by_ticker.parquet", "points.parquet", "scorecard.png",
                 "report.md"):
        assert storage.exists(f"{card}/{name}"), name
    by_date = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{card}/by_date.parquet")))
    for day in days[:-1]:
        f = publish.read_kind(runs_of(day)[0])
        err = naive = inside = n = 0.0
        for row in f.itertuples():
            s = df[df["ticker"] == row.ticker].sort_values("date").reset_index(drop=True)
            origin = s.index[s["date"] <= row.as_of][-1]
            if origin + row.step >= len(s):
                continue  # not arrived yet
            actual = s["close"].iloc[origin + row.step]
            err += abs(row.forecast - actual)
            naive += abs(row.last_close - actual)
            inside += row.lo_80 <= actual <= row.hi_80
            n += 1
        got = by_date[by_date["as_of"].astype(str).str[:10] == day].iloc[0]
        assert got["scored"] == n > 0
        assert got["rmae"] == pytest.approx(err / naive, rel=1e-9)
        assert got["coverage"] == pytest.approx(inside / n, rel=1e-9)

    print("\ndate        champion  rows  scorecard rMAE (latest scored date)  coverage")
    for d, v, rows, rmae, cov in table:
        print(f"{d}  v{v:<8} {rows:<5} {rmae:<36.4f} {cov:.3f}")
    print("\n\n".join(gates))
    print({k: (np.round(v, 1).tolist() if isinstance(v, list) else round(v, 1)) for k, v in timings.items()})
