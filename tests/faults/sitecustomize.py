"""Fault injection for the job tests; production code has no crash switch.

``jobhelpers.faults(...)`` puts this folder on PYTHONPATH, so Python imports this file at the
start of every process of the job under test: the driver and Ray's workers, which inherit the
environment. When a fault variable is set, an import hook patches the named module as it is
imported, and the patch dies (``os._exit``, like a killed process) at the chosen point:

RNNJOBS_FAULT_EPOCH=N, RNNJOBS_FAULT_MARKER=path   the last Train rank, before epoch N
RNNJOBS_SCORE_FAULT_MARKER=path                    the first scoring actor call
RNNJOBS_SCORE_FAULT_AFTER_PART=path                a scoring actor, after it wrote its batch's
                                                   parts (their manifest entries go in the marker)
RNNJOBS_SCORE_CRASH_BEFORE_COMMIT=1                the score driver, after its parts, before _SUCCESS

A marker file makes a fault fire once per test, so the retry that follows succeeds.

Not a fault but a rendezvous: RNNJOBS_SCORE_COMMIT_BARRIER=folder makes a score driver that is
about to create _SUCCESS wait there until RNNJOBS_SCORE_COMMIT_PARTIES drivers (default 2) have
come, then until a start time 0.2 s on (spinning its last ms), so that their commits race for real
(exit 3 if the others do not come within 120 s); each writes the time it went on to PID.went.
"""

import importlib.util
import json
import os
import sys
import time
from importlib.abc import MetaPathFinder


def _once(marker: str) -> bool:
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def _train(module) -> None:
    at, marker = int(os.environ["RNNJOBS_FAULT_EPOCH"]), os.environ["RNNJOBS_FAULT_MARKER"]
    run_epoch = module.run_epoch

    def dying_run_epoch(model, optimizer, task, cfg, state, *, rank=0, world=1, **kwargs):
        if state.epoch == at and rank == world - 1 and _once(marker):
            os._exit(1)
        return run_epoch(model, optimizer, task, cfg, state, rank=rank, world=world, **kwargs)

    module.run_epoch = dying_run_epoch


def _score(module) -> None:
    marker = os.environ.get("RNNJOBS_SCORE_FAULT_MARKER")
    if marker:
        for cls in (module.ScoreBatch, module.ScoreBlock):
            call = cls.__call__

            def dying_call(self, batch, call=call):
                if _once(marker):
                    os._exit(1)
                return call(self, batch)

            cls.__call__ = dying_call
    after = os.environ.get("RNNJOBS_SCORE_FAULT_AFTER_PART")
    if after:
        publish = module.ScoreBatch.publish  # ScoreBlock inherits it

        def dying_publish(self, res, key, files):
            summary = publish(self, res, key, files)  # the parts are written
            if _once(after):
                with open(after, "w") as f:
                    f.write(summary["parts"].iloc[0])
                os._exit(1)
            return summary

        module.ScoreBatch.publish = dying_publish
    if os.environ.get("RNNJOBS_SCORE_CRASH_BEFORE_COMMIT"):
        module.publish.commit = lambda *args, **kwargs: os._exit(1)  # only the driver commits
    if os.environ.get("RNNJOBS_SCORE_COMMIT_BARRIER"):
        _commit_barrier(module.publish.storage)


def _commit_barrier(storage) -> None:
    folder = os.environ["RNNJOBS_SCORE_COMMIT_BARRIER"]
    parties = int(os.environ.get("RNNJOBS_SCORE_COMMIT_PARTIES", "2"))
    create_if_absent = storage.create_if_absent

    def create_together(uri, data, endpoint_url=None):
        if str(uri).endswith("/_SUCCESS"):  # only the driver creates _SUCCESS
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, str(os.getpid())), "w").close()
            go, end = os.path.join(folder, "go.time"), time.monotonic() + 120
            if sum("." not in name for name in os.listdir(folder)) >= parties:  # the last to come sets the time
                with open(go + f".{os.getpid()}", "w") as f:
                    f.write(json.dumps(time.time() + 0.2))
                try:
                    os.link(go + f".{os.getpid()}", go)  # the first of the last to come
                except FileExistsError:
                    pass
            while not os.path.exists(go):
                if time.monotonic() > end:
                    os._exit(3)
                time.sleep(0.001)
            with open(go) as f:
                at = float(f.read())
            time.sleep(max(0.0, at - time.time() - 0.005))
            while time.time() < at:  # the last few ms spinning: sleep wakes up late on a busy machine
                pass
            with open(os.path.join(folder, f"{os.getpid()}.went"), "w") as f:  # when it went on
                f.write(json.dumps(time.time()))
        return create_if_absent(uri, data, endpoint_url)

    storage.create_if_absent = create_together


PATCHES = {}
if os.environ.get("RNNJOBS_FAULT_EPOCH"):
    PATCHES["jobs.train"] = _train
if any(os.environ.get(k) for k in ("RNNJOBS_SCORE_FAULT_MARKER", "RNNJOBS_SCORE_FAULT_AFTER_PART",
                                   "RNNJOBS_SCORE_CRASH_BEFORE_COMMIT", "RNNJOBS_SCORE_COMMIT_BARRIER")):
    PATCHES["jobs.score"] = _score


class _PatchOnImport(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)  # let the normal finders locate the module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


if PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
