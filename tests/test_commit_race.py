"""The commit primitive under a real race: ``storage.create_if_absent`` called at the same instant
from many threads in many processes, on a local folder and on S3 (moto's server on 127.0.0.1).
Exactly one call may win, and what is at the target is the winner's payload.

The contenders are forked (cheap: nothing to import again) and each process starts its threads;
every thread waits at one barrier shared by all processes and the test, then sleeps until a start
time the test set, so all of them call the primitive at once rather than in arrival order (the
barrier lets its waiters go one by one). A check-then-write in place of the primitive
(``if exists: return False; write; return True``) fails both tests: 2 to 43 winners in a round."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pandas as pd
import pytest

from rnnlib import publish, storage

PROCESSES, THREADS, ROUNDS = 8, 16, 8  # ROUNDS: local targets raced one after another
pytestmark = pytest.mark.timeout(120)


def _contend(uris: list[str], endpoint: str | None, barrier, go, results) -> None:
    """One process: THREADS threads, each calling create_if_absent on every target in turn with
    its own payload, all released together by the barrier for each target; puts
    [(target, payload, won or an error's repr)] on ``results``."""
    out = []

    def one(i: int) -> None:
        payload = f"{os.getpid()}-{i}".encode()
        for uri in uris:
            barrier.wait(timeout=60)
            time.sleep(max(0.0, go.value - time.time()))  # the barrier wakes its waiters one by one
            try:
                out.append((uri, payload, storage.create_if_absent(uri, payload, endpoint)))
            except Exception as e:  # an error is an outcome to report, not a silent loser
                out.append((uri, payload, repr(e)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


def race(uris: list[str], endpoint: str | None = None) -> dict[str, list[tuple[bytes, object]]]:
    """For each target in turn, PROCESSES x THREADS simultaneous calls: {target: [(payload, outcome)]}.
    Several targets (rounds) because one round on a fast local disk can happen to let a
    check-then-write through; all rounds together do not."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCESSES * THREADS + 1)
    go = ctx.Value("d", 0.0, lock=False)  # when the calls start: set before each round's barrier opens
    results = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(uris, endpoint, barrier, go, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        for _ in uris:
            go.value = time.time() + 0.05
            barrier.wait(timeout=60)  # every thread of every process is waiting: release them together
        outcomes = [o for _ in procs for o in results.get(timeout=60)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    by_target = {u: [(payload, won) for t, payload, won in outcomes if t == u] for u in uris}
    assert all(len(v) == PROCESSES * THREADS for v in by_target.values())
    return by_target


def assert_one_winner(outcomes, content: bytes) -> None:
    errors = [o for o in outcomes if not isinstance(o[1], bool)]
    assert not errors, errors[:5]
    winners = [payload for payload, won in outcomes if won]
    assert len(winners) == 1, f"{len(winners)} calls created the object: {winners[:10]}"
    assert content == winners[0]


def test_create_if_absent_local_race(tmp_path):
    targets = [tmp_path / f"run={i}" / "_SUCCESS" for i in range(ROUNDS)]
    for target, outcomes in zip(targets, race(list(map(str, targets))).values()):
        assert_one_winner(outcomes, target.read_bytes())
        assert [p.name for p in target.parent.iterdir()] == ["_SUCCESS"]  # no temporary file left behind


@pytest.fixture
def atomic_conditional_puts(monkeypatch):
    """moto's server checks If-None-Match and then writes, two steps with nothing between them to
    keep another request out (moto 5.2, ``S3Response.put_object``), so two conditional PUTs at
    once can both succeed (seen here: 2 winners in about 1 run of 16), which S3 does not allow.
    Its conditional PUTs are serialised here so the fake store keeps S3's promise; the race then
    tests our side: the request carries the condition, and a refusal counts as a loss."""
    from moto.s3.responses import S3Response

    put, lock = S3Response.put_object, threading.Lock()

    def put_object(self):
        if self.headers.get("If-None-Match") != "*":
            return put(self)
        with lock:
            return put(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def test_create_if_absent_s3_race(moto_s3, atomic_conditional_puts):
    endpoint, _, s3 = moto_s3
    s3.create_bucket(Bucket="race")
    keys = ["run=0/_SUCCESS"]  # one round: a request to the store takes long enough to race every time
    for key, outcomes in zip(keys, race([f"s3://race/{k}" for k in keys], endpoint).values()):
        assert_one_winner(outcomes, s3.get_object(Bucket="race", Key=key)["Body"].read())
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="race")["Contents"]) == keys


def test_the_winners_cleanup_leaves_a_live_losers_write_in_flight(tmp_path, monkeypatch):
    """The interleaving that failed the two-attempt score test once in CI (exit 1): attempt B has
    written its _SUCCESS temporary file when attempt A commits and cleans the folder, then B links
    it. B must learn that it lost, not crash on its vanished file (FileNotFoundError before the
    fix). A temporary file a killed writer left an hour ago is cleaned; one it left a minute ago
    stays (it may be a live write), hidden, and verify does not count it."""
    folder = tmp_path / "run=abc"
    run, df = str(folder), pd.DataFrame({"a": [1, 2, 3]})
    parts = {a: [publish.write_part(run, f"forecasts/part-{a}.parquet", df, "forecasts")] for a in ("A", "B")}
    stale, young = (folder / "forecasts" / storage.temporary_name(f"part-{k}.parquet") for k in ("old", "new"))
    for f, age in ((stale, 2 * publish.STALE_TEMP_S), (young, 60)):
        f.write_bytes(b"half")
        os.utime(f, (time.time() - age,) * 2)
    link, turns, won, removed = os.link, [], [], []

    def a_commits_first(src, dst):
        if os.path.basename(dst) == publish.SUCCESS and not turns:  # B's link: A gets there first
            turns.append("A")  # A's own link below goes straight through
            won.append(publish.commit(run, "A", {"files": parts["A"]}))
            removed.extend(publish.clean_unlisted(run))
        return link(src, dst)

    monkeypatch.setattr(storage.os, "link", a_commits_first)
    assert publish.commit(run, "B", {"files": parts["B"]}) is False and won == [True]
    assert removed == [f"forecasts/{stale.name}", "forecasts/part-B.parquet", "manifest-B.json"]
    assert publish.read_manifest(run)[0] == "manifest-A.json"
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert left == ["_SUCCESS", f"forecasts/{young.name}", "forecasts/part-A.parquet", "manifest-A.json"]
    v = publish.verify(run)
    assert v.ok and v.checked == 1, v.problems
