"""The Ray Data scoring job end to end: on the session's shared Ray (``shared_ray``), or on a
local Ray of its own where a fault is injected into Ray's workers (a hook in the drivers only,
as the commit rendezvous, is fine on the shared Ray: its workers never see the job's env)."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, SHARED
from jobhelpers import FAKE_SECRET, faults, run, start

from jobs import score
from rnnlib import publish, storage
from rnnlib.config import job_from_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.fit import fit

pytestmark = [pytest.mark.slow(seconds=230), pytest.mark.timeout(600)]
CONFIG = "jobs/configs/forecast-score.yaml"
HORIZON = 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "model"
    cfg = job_from_dict({"model": {"hidden": 8, "layers": 1}, "data": {"window": 20, "horizon": HORIZON},
                         "train": {"epochs": 1, "batch_size": 512}})
    fit(cfg, out=out, log=lambda s: None)
    return out


def read_published(run_uri: str, kind: str = "forecasts") -> pd.DataFrame:
    return publish.read_kind(run_uri, kind)


def only_run(out) -> str:
    runs = [p for p in storage.list_files(str(out), recursive=True) if p[0].endswith("/_SUCCESS")]
    assert len(runs) == 1, runs
    return runs[0][0].rsplit("/", 1)[0]


def assert_folder_is_the_manifest(run_uri: str) -> dict:
    """The run folder holds exactly what its manifest lists (plus the manifest and _SUCCESS), and
    each listed Parquet file has the rows the manifest gives it. Returns the manifest."""
    name, manifest = publish.read_manifest(run_uri)
    listed = {f["path"]: f["rows"] for f in manifest["files"]}
    base = len(run_uri.rstrip("/")) + 1
    on_disk = {uri[base:] for uri, _, _ in storage.list_files(run_uri, recursive=True)}
    assert on_disk == set(listed) | {name, "_SUCCESS"}, on_disk ^ (set(listed) | {name, "_SUCCESS"})
    for path, rows in listed.items():
        assert pq.read_metadata(storage.filesystem(storage.join(run_uri, path))[1]).num_rows == rows, path
    return manifest


def assert_published_equals_rnnlib(run_uri: str, model_dir, files) -> pd.DataFrame:
    """The published forecasts equal rnnlib's own scoring of the same files with the same bundle
    (in this process, no Ray): same tickers, same rows, values to float32 tolerance."""
    from rnnlib.bundle import open_bundle
    from rnnlib.scoring import score_files

    key = ["ticker", "step"]
    expected = score_files(open_bundle(str(model_dir), task="forecast"), [str(f) for f in files]).forecasts
    got = read_published(run_uri).sort_values(key, ignore_index=True)
    expected = expected.sort_values(key, ignore_index=True)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-5)
    return got


def test_s3_end_to_end_verify_and_rerun_noop(moto_s3, model_dir, shared_ray):
    endpoint, env, s3 = moto_s3
    env = {**env, **shared_ray}
    s3.create_bucket(Bucket="scoring")
    for f in sample_stocks_dir().glob("*.csv"):
        s3.upload_file(str(f), "scoring", f"histories/{f.name}")
    for f in model_dir.iterdir():
        s3.upload_file(str(f), "scoring", f"model/{f.name}")
    args = ["score", CONFIG, "input=s3://scoring/histories", "model=s3://scoring/model", "output=s3://scoring/out"]
    before = score.exchange_today("America/New_York")
    r = run(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert FAKE_SECRET not in r.stdout + r.stderr
    run_uri = only_run("s3://scoring/out")
    assert run(*["verify", run_uri], env=env).returncode == 0
    # filed under today's date where the exchange is (no as_of), and both LATEST pointers name it
    day = run_uri.split("/as_of=")[1].split("/")[0]
    assert day in (before, score.exchange_today("America/New_York"))
    assert publish.resolve("s3://scoring/out") == publish.resolve(f"s3://scoring/out/as_of={day}") == run_uri
    by_pointer = run("verify", "s3://scoring/out", env=env)
    assert by_pointer.returncode == 0 and f"-> {run_uri}" in by_pointer.stdout
    _, manifest = publish.read_manifest(run_uri)
    c = manifest["counts"]
    assert c["series_in"] == c["series_scored"] + c["series_rejected"] == 26
    assert c["series_rejected"] == 0  # window 20: even APTV (44 rows) can be scored
    assert c["rows_in"] == c["rows_kept"] + c["rows_rejected"] == 31519
    f = assert_published_equals_rnnlib(run_uri, model_dir, sorted(sample_stocks_dir().glob("*.csv")))
    assert len(f) == c["series_scored"] * HORIZON == c["forecast_rows"]
    assert c["windows"] == c["series_scored"]  # forecast mode: one window per series
    assert not f.duplicated(["ticker", "step"]).any()
    assert {"ticker", "as_of", "step", "date", "forecast", "lo_80", "hi_80"} <= set(f.columns)
    assert FAKE_SECRET not in json.dumps(manifest)
    again = run(*args, env=env)
    assert again.returncode == 0 and "already published" in again.stdout


def test_crash_before_commit_then_rerun_publishes_exactly_once(tmp_path, model_dir):
    out = tmp_path / "out"
    args = ["score", CONFIG, f"model={model_dir}", f"output={out}"]
    crashed = run(*args, env=faults(RNNJOBS_SCORE_CRASH_BEFORE_COMMIT="1"))
    assert crashed.returncode != 0
    assert not list(out.rglob("_SUCCESS")) and list(out.rglob("*.parquet"))  # parts, but nothing committed
    r = run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    run_uri = only_run(out)
    assert "removed" in r.stdout  # the failed attempt's parts were cleaned
    f = read_published(run_uri)
    assert len(f) == 26 * HORIZON and not f.duplicated(["ticker", "step"]).any()
    assert publish.verify(run_uri).ok
    listed = {p["path"] for p in publish.read_manifest(run_uri)[1]["files"]}
    on_disk = {str(p.relative_to(run_uri)) for p in (tmp_path / "out").rglob("*.parquet")}
    assert on_disk == listed


def test_two_attempts_commit_at_once(tmp_path, model_dir, shared_ray):
    """Two attempts of one run score side by side, then meet before creating _SUCCESS (a
    rendezvous in tests/faults) so that their commits race: one publishes, the other removes
    what it wrote, and the folder holds exactly the winner's manifest."""
    out, barrier = tmp_path / "out", tmp_path / "barrier"
    args = ["score", CONFIG, f"model={model_dir}", f"output={out}", "actors=1"]  # two jobs on 2 CPUs
    env = {**shared_ray, **faults(RNNJOBS_SCORE_COMMIT_BARRIER=str(barrier))}
    procs = [start(*args, env=env, log=tmp_path / f"attempt{i}.log") for i in range(2)]
    for p in procs:
        assert p.wait(timeout=400) == 0, [(tmp_path / f"attempt{i}.log").read_text()[-3000:] for i in range(2)]
    logs = [(tmp_path / f"attempt{i}.log").read_text() for i in range(2)]
    won = [any(line.startswith("published ") for line in log.splitlines()) for log in logs]
    lost = ["another attempt published" in log for log in logs]
    assert sorted(won) == [False, True] and sorted(lost) == [False, True] and won != lost, logs
    went = [float((barrier / f).read_text()) for f in sorted(barrier.iterdir()) if f.suffix == ".went"]
    assert len(went) == 2 and abs(went[0] - went[1]) < 0.5  # both went on to create _SUCCESS at once
    run_uri = only_run(out)
    assert publish.verify(run_uri).ok
    manifest = assert_folder_is_the_manifest(run_uri)  # the loser's parts and manifest are gone
    assert sum(f["rows"] for f in manifest["files"] if f["kind"] == "forecasts") == 26 * HORIZON
    assert len(read_published(run_uri)) == 26 * HORIZON


def test_corrupted_part_fails_verify_naming_the_file(tmp_path, model_dir, shared_ray):
    out = tmp_path / "out"
    assert run("score", CONFIG, f"model={model_dir}", f"output={out}", "mode=backtest",
               "backtest_days=40", env=shared_ray).returncode == 0
    run_uri = only_run(out)
    m = read_published(run_uri, "metrics")
    assert len(m) == 26 and (m.rmae > 0).all()
    part = next((tmp_path / "out").rglob("forecasts/part-*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)
    r = run("verify", run_uri)
    assert r.returncode == 1
    assert part.name in r.stderr and "sha256 differs" in r.stderr


def test_bad_histories_mixed_in_are_rejected_with_reasons(tmp_path, model_dir, shared_ray):
    data = tmp_path / "in"
    data.mkdir()
    for f in list(sample_stocks_dir().glob("*.csv"))[:4] + list((FIXTURES / "stocks_bad").glob("*.csv")):
        shutil.copy(f, data / f.name)
    messy = SHARED / "stocks" / "messy"
    if messy.exists():
        for f in messy.glob("*.csv"):
            shutil.copy(f, data / f.name)
    out = tmp_path / "out"
    r = run("score", CONFIG, f"model={model_dir}", f"output={out}", f"input={data}", env=shared_ray)
    assert r.returncode == 0, r.stderr[-3000:]
    run_uri = only_run(out)
    rej = read_published(run_uri, "rejects")
    for name in ("EMPTY_data.csv", "LATIN1_data.csv", "NOCLOSE_data.csv", "JUNK_data.csv"):
        assert rej.file.str.endswith(name).any(), name
    assert (rej.reason.str.len() > 0).all()
    scored = set(read_published(run_uri).ticker)
    assert {"HTML", "JSON", "MIXED"} <= scored
    c = publish.read_manifest(run_uri)[1]["counts"]
    assert c["rows_in"] == c["rows_kept"] + c["rows_rejected"]
    assert "rejected" in r.stdout


def test_scoring_actor_dies_and_ray_retries(tmp_path, model_dir):
    """Two scoring actors die: one as its first batch starts, one just after writing a batch's
    parts (a retry could publish those rows twice). Ray Data retries both batches; every ticker is
    published once with its HORIZON rows, the values rnnlib's own scoring gives, and no part is
    left that the manifest does not list."""
    before, after = tmp_path / "died-before", tmp_path / "died-after-part"
    out = tmp_path / "out"
    r = run("score", CONFIG, f"model={model_dir}", f"output={out}", "files_per_batch=4",
            env=faults(RNNJOBS_SCORE_FAULT_MARKER=str(before), RNNJOBS_SCORE_FAULT_AFTER_PART=str(after)))
    assert before.exists(), "the fault hook did not fire"
    assert after.exists() and after.read_text(), "the after-part fault hook did not fire"
    assert r.returncode == 0, r.stderr[-3000:]
    run_uri = only_run(out)
    assert publish.verify(run_uri).ok
    manifest = assert_folder_is_the_manifest(run_uri)
    listed = [f["path"] for f in manifest["files"]]
    dead = json.loads(after.read_text())  # the parts the dead actor wrote: rewritten by the retry, listed once
    assert dead and all(listed.count(part["path"]) == 1 for part in dead), (dead, listed)
    rows = {f["path"]: f["rows"] for f in manifest["files"]}
    assert all(rows[part["path"]] == part["rows"] for part in dead)
    files = sorted(sample_stocks_dir().glob("*.csv"))
    f = assert_published_equals_rnnlib(run_uri, model_dir, files)
    assert set(f.ticker) == {p.name.split("_")[0] for p in files} and len(files) == 26
    assert (f.groupby("ticker").size() == HORIZON).all()
    assert not f.duplicated(["ticker", "step"]).any()


def task_runtime_envs(gcs: str, kinds: tuple[str, ...]) -> dict[str, set[str]]:
    """{kind: the serialized runtime envs of the tasks on this Ray whose name holds it}. Ray starts a
    worker process for a task only among the processes of its runtime env: one env, one pool. Task
    events reach the State API about a second after the job: wait for every kind."""
    import time

    from ray.util.state import list_tasks

    deadline, envs = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        tasks = list_tasks(address=gcs, filters=[("type", "=", "NORMAL_TASK")], detail=True, limit=10_000,
                           raise_on_missing_output=False)  # not the actors' calls: Ray Data's come by the thousand
        envs = {k: {str((t.get("runtime_env_info") or {}).get("serialized_runtime_env")) for t in tasks
                    if k in t["name"]} for k in kinds}
        if all(envs.values()):
            break
        time.sleep(1)
    return envs


def test_daily_partitions_score_like_per_ticker_files(model_dir, tmp_path, shared_ray):
    """A ticker spread over one Parquet file per day (Hive partitions): Ray Data groups its rows
    by ticker; forecasts equal the per-ticker layout's row for row, each series scored once."""
    from layouts import read_per_ticker, write_layout

    raw = {t: df.iloc[-160:] for t, df in read_per_ticker(sorted(sample_stocks_dir().glob("*.csv"))[:8]).items()}
    runs = {}
    for layout in ("per_ticker", "hive_daily"):
        src = write_layout(raw, tmp_path / layout, layout)
        (src / "_SUCCESS").write_text("")  # a marker a Spark job leaves: listed, not read
        r = run("score", CONFIG, f"input={src}", f"model={model_dir}", f"output={tmp_path / 'out' / layout}",
                "mode=backtest", "backtest_days=100", "files_per_batch=20", env=shared_ray)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"({'long' if layout == 'hive_daily' else layout} layout)" in r.stdout
        assert "will hang" not in r.stderr, r.stderr[-3000:]  # Ray Data's false alarm after the shuffle
        runs[layout] = only_run(tmp_path / "out" / layout)
    assert len(list((tmp_path / "hive_daily").glob("date=*"))) == 160
    key = ["ticker", "origin", "step"]
    a, b = (read_published(runs[k]).sort_values(key, ignore_index=True) for k in ("per_ticker", "hive_daily"))
    assert len(a) > 0 and not b.duplicated(key).any()
    pd.testing.assert_frame_equal(a, b)
    counts = {k: publish.read_manifest(u)[1]["counts"] for k, u in runs.items()}
    assert counts["hive_daily"]["rows_in"] == counts["per_ticker"]["rows_in"] == sum(map(len, raw.values()))
    assert counts["hive_daily"]["files"] == 160 and counts["per_ticker"]["files"] == 8
    assert counts["hive_daily"]["series_scored"] == counts["per_ticker"]["series_scored"] == 8
    # backtest: a window per origin, as many as the forecasts' (ticker, origin) pairs and the metrics' windows
    windows = read_published(runs["per_ticker"], "metrics")["windows"].sum()
    assert counts["hive_daily"]["windows"] == counts["per_ticker"]["windows"] == windows == len(
        a[["ticker", "origin"]].drop_duplicates()) > 0
    rejects = read_published(runs["hive_daily"], "rejects")
    assert list(rejects[rejects.action == "skip_file"].file) == [str(tmp_path / "hive_daily" / "_SUCCESS")]
    # its read, shuffle map, shuffle reduce and scoring tasks ran in one worker pool (jobs.ray_setup.ONE_TASK_POOL)
    envs = task_runtime_envs(shared_ray["RAY_ADDRESS"],
                             ("read_rows_batch", "HashShuffleMap", "HashShuffleReduce", "score_block"))
    assert all(envs.values()) and len(set().union(*envs.values())) == 1, envs
    # forced per-ticker batching on files that split tickers: refused, nothing published
    bad = run("score", CONFIG, f"input={tmp_path / 'hive_daily'}", f"model={model_dir}", "files_per_batch=100",
              f"output={tmp_path / 'out' / 'forced'}", "input_layout=per_ticker", env=shared_ray)
    assert bad.returncode == 2 and "input_layout=long" in bad.stderr and "Traceback" not in bad.stderr
    assert not any((tmp_path / "out" / "forced").rglob("_SUCCESS"))


def test_read_tasks_do_not_import_torch():
    """The long layout's read tasks import jobs.score in new worker processes: torch (about 1 s a
    process) must come only with the model, in the scoring actors."""
    code = "import sys, jobs.score; print(sorted(m for m in ('torch', 'rnnlib.bundle') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

