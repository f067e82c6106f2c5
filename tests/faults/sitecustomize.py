"""Fault injection for the job tests; production code has no crash switch.

``jobhelpers.faults(...)`` puts this folder on PYTHONPATH, so Python imports this file at the
start of every process of the job under test: the driver and Ray's workers, which inherit the
environment. When a fault variable is set, an import hook patches the named module as it is
imported, and the patch dies (``os._exit``, like a killed process) at the chosen point:

RNNJOBS_FAULT_EPOCH=N, RNNJOBS_FAULT_MARKER=path   the last Train rank, before epoch N
RNNJOBS_SCORE_FAULT_MARKER=path                    the first scoring actor call
RNNJOBS_SCORE_CRASH_BEFORE_COMMIT=1                the score driver, after its parts, before _SUCCESS

A marker file makes a fault fire once per test, so the retry that follows succeeds.
"""

import importlib.util
import os
import sys
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
    if os.environ.get("RNNJOBS_SCORE_CRASH_BEFORE_COMMIT"):
        module.publish.commit = lambda *args, **kwargs: os._exit(1)  # only the driver commits


PATCHES = {}
if os.environ.get("RNNJOBS_FAULT_EPOCH"):
    PATCHES["jobs.train"] = _train
if os.environ.get("RNNJOBS_SCORE_FAULT_MARKER") or os.environ.get("RNNJOBS_SCORE_CRASH_BEFORE_COMMIT"):
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
