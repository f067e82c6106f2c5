"""What a search costs on object storage: S3 requests and bytes per trial-epoch, side by side.

One moto S3 server on 127.0.0.1 that counts every request it serves (method, object, bytes in and
out); the same search (`rnnjobs tune`, process trials, FIFO so every trial runs every epoch), each
on a fresh prefix and its own local Ray, run by two versions of the code:

  before   the commit --before (default: the last before this benchmark): the experiment state
           saved every 2 s (TUNE_GLOBAL_CHECKPOINT_S=2) and one checkpoint kept per trial
           (num_to_keep=1 makes Tune force an experiment snapshot after every trial checkpoint)
  after    this working tree

S3 bills PUT, POST, LIST and COPY at 12.5x GET and HEAD (DELETE is free), so both classes are shown.

    python bench/tune_requests.py [--samples 8] [--epochs 4] [--before REF] [key=value ...]
Target (issue 18): requests per trial-epoch down to what resuming needs; reported before/after.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import write  # noqa: E402
from jobhelpers import moto_server  # noqa: E402

from rnnlib.tables import table  # noqa: E402

BEFORE = "1787f89"  # the last commit before the request count came down
WRITES = ("put", "post", "list")  # billed as PUT-class requests


class Counter:
    """A WSGI middleware around moto that counts requests by (method, kind) and the bytes moved."""

    def __init__(self):
        self.app, self.lock = None, threading.Lock()
        self.reset()

    def around(self, app):
        self.app = app
        return self

    def reset(self) -> None:
        with self.lock:
            self.requests, self.puts, self.bytes_in, self.bytes_out = collections.Counter(), collections.Counter(), 0, 0

    def __call__(self, environ, start_response):
        method, query, path = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", ""), environ["PATH_INFO"]
        kind = "list" if method == "GET" and ("list-type" in query or "prefix=" in query) else \
            "delete" if method == "POST" and "delete" in query else method.lower()
        what = "checkpoint" if "/checkpoint_" in path else "trial" if "/trial_" in path else "experiment"
        body = list(self.app(environ, start_response))
        with self.lock:
            self.requests[kind] += 1
            self.puts[what] += method == "PUT"
            self.bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
            self.bytes_out += sum(len(b) for b in body)
        return body


def search(name: str, code: Path, endpoint: str, counter: Counter, a, extra: list[str]) -> dict:
    """The search run by the code in folder ``code`` under s3://bench/NAME, its requests counted."""
    cmd = [sys.executable, "-m", "jobs.cli", "tune", "jobs/configs/forecast-tune.yaml", "tune.scheduler=fifo",
           "train.patience=0", f"tune.num_samples={a.samples}", f"train.epochs={a.epochs}",
           f"storage=s3://bench/{name}", *extra]
    counter.reset()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=code, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{name}: the search failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    m = re.search(r"(\d+) trial-epochs of", r.stdout)
    epochs = int(m.group(1))
    with counter.lock:
        req, puts, bin_, bout = dict(counter.requests), dict(counter.puts), counter.bytes_in, counter.bytes_out
    total, writes = sum(req.values()), sum(req.get(k, 0) for k in WRITES)
    return {"code": name, "trial_epochs": epochs, "requests": total, "by_kind": req, "puts_by_object": puts,
            "requests_per_trial_epoch": total / epochs, "put_class_per_trial_epoch": writes / epochs,
            "get_class_per_trial_epoch": (req.get("get", 0) + req.get("head", 0)) / epochs,
            "mb_in_per_trial_epoch": bin_ / epochs / 1e6, "mb_out": bout / 1e6, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE, help="the commit to compare with (a git ref)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   default=["model.hidden=16", "tune.max_concurrent_trials=2"])
    a = p.parse_args()
    counter = Counter()
    with moto_server(wrap=counter.around) as endpoint, tempfile.TemporaryDirectory() as tmp:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), a.before], cwd=ROOT, check=True)
        try:
            rows = [search("before", old, endpoint, counter, a, a.overrides),
                    search("after", ROOT, endpoint, counter, a, a.overrides)]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    print(table([[r["code"], r["trial_epochs"], r["requests"], r["requests_per_trial_epoch"],
                  r["put_class_per_trial_epoch"], r["get_class_per_trial_epoch"], r["mb_in_per_trial_epoch"],
                  r["wall_s"],
                  " ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items())),
                  " ".join(f"{k} {v}" for k, v in sorted(r["puts_by_object"].items()))] for r in rows],
                ["code", "trial-epochs", "requests", "requests / trial-epoch", "PUT-class / trial-epoch",
                 "GET-class / trial-epoch", "MB uploaded / trial-epoch", "wall s", "requests by kind",
                 "PUTs by object"]))
    before, after = rows
    print(f"\nafter / before: requests per trial-epoch "
          f"{after['requests_per_trial_epoch'] / before['requests_per_trial_epoch']:.2f}x, PUT-class "
          f"{after['put_class_per_trial_epoch'] / before['put_class_per_trial_epoch']:.2f}x, bytes uploaded "
          f"{after['mb_in_per_trial_epoch'] / before['mb_in_per_trial_epoch']:.2f}x")
    out = write("tune_requests", {"samples": a.samples, "epochs": a.epochs, "before": a.before,
                                  "overrides": a.overrides, "rows": rows})
    print(f"written: {out}")


if __name__ == "__main__":
    main()
