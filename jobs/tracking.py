"""Experiment tracking with MLflow (the ``rnnjobs[mlflow]`` extra): off unless ``tracking.mlflow_uri``
is set, and then mlflow is imported here only (never by rnnlib, never in a Ray worker).

One MLflow run per rnnjobs run, found again by a tag (``rnnjobs.key``: the kind and the run's name,
search name or score run id), so a resumed run continues its MLflow run and a rerun of a finished
one logs nothing twice. What is logged is read back from what the job wrote (metrics.json, model/,
results.csv, the manifest) once it is written, so a run found finished whose MLflow run is missing
(tracking turned on later, or MLflow was down) is logged by running the same command again.

    train  params: the trained config, flattened (model.cell, train.lr, ...); tags: task, cell,
           data_sha256; per epoch (step = epoch): train_loss, val_loss, seconds, train_seconds, from
           the run's history; the test metrics as final.*; artifacts: model/ (bundle.json,
           weights.pt), metrics.json, loss.png; with release.model: the version registered, and the
           gate's figures (gate.<side>.<figure>), decision and record (gate.json)
    tune   a parent run for the search (params: the base config, the space as search.*, tune.*);
           Ray Tune's MLflowLoggerCallback logs one child run per trial (params: the sampled
           values; every numeric result per epoch; FINISHED or FAILED); when the search ends the
           parent gets best_val_loss, the best trial's final.*, results.csv, best.yaml and its model
    score  params: mode, as_of, model (as given) and the version it resolved to, input; metrics:
           the manifest's counts, for a backtest the mean rmae, coverage and pinball over tickers;
           artifact: manifest.json
    models ``promote`` and ``gate`` with --mlflow-uri: one run per alias move or gate decision

Train logs from the driver after fit, from the history of the last checkpoint (each epoch once,
even when a resumed run replayed one; the values are metrics.json's), not from the Train workers
(``setup_mlflow``): the workers may run on nodes that cannot reach the store, and a resumed worker
would log a replayed epoch twice. Tune's callback runs in the driver too. So only the driver needs
mlflow, and the tracking URI must be reachable from where the driver runs.

A failure to log after the job's work is done is reported and leaves the exit code alone: the
outputs are written, and the same command logs them later.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rnnlib import storage
from rnnlib.errors import UserError

INSTALL = "pip install 'rnnjobs[mlflow]'"
DEFAULT_EXPERIMENT = "rnnjobs"
EPOCH_KEYS = ("train_loss", "val_loss", "seconds", "train_seconds")
KEY_TAG = "rnnjobs.key"


def require_mlflow(key: str):
    """The mlflow module, or a ``UserError`` (exit 2) naming the extra that installs it."""
    try:
        import mlflow
    except ImportError as e:
        raise UserError(f"{key} is set, but MLflow is not installed ({e}); install the extra: {INSTALL} "
                        f"(or leave {key} unset)") from None
    return mlflow


@dataclass
class Tracker:
    """A connection to an MLflow tracking store and one experiment in it."""

    client: object
    uri: str
    experiment: str
    experiment_id: str


@dataclass
class Run:
    """One MLflow run of a tracked rnnjobs run; ``done``: it was logged to the end before."""

    tracker: Tracker
    run_id: str
    done: bool


def connect(tracking, key: str = "tracking.mlflow_uri") -> Tracker | None:
    """Open the store and the experiment of a ``TrackingConfig`` (None when tracking is off).

    Called before the data is read and before Ray starts: a missing extra or a store MLflow refuses
    is an error (exit 2) then, not after an hour of training."""
    uri = getattr(tracking, "mlflow_uri", None)
    return open_store(uri, getattr(tracking, "experiment", None), key) if uri else None


def open_store(uri: str, experiment: str | None, key: str) -> Tracker:
    storage.refuse_credentials(uri, key)  # a last guard: config and flags refuse them first
    require_mlflow(key)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for name in ("mlflow", "alembic"):  # table creation and migration notes on a new store
        logging.getLogger(name).setLevel(logging.WARNING)
    name = experiment or DEFAULT_EXPERIMENT
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri))
            except MlflowException:  # created by another job a moment ago
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
                exp_id = found.experiment_id
        else:
            exp_id = found.experiment_id
    except (MlflowException, OSError) as e:
        raise UserError(f"{key} {storage.redact(uri)}: MLflow cannot use it: {_message(e)}") from None
    print(f"tracking: MLflow {storage.redact(uri)}, experiment {name}")
    return Tracker(client, uri, name, exp_id)


def _artifact_location(uri: str) -> str | None:
    """A local SQLite store keeps new experiments' artifacts in ``mlartifacts/`` beside the database
    (MLflow's default would be ``./mlruns`` wherever the job happens to run); elsewhere MLflow (or
    the tracking server) decides."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return (db.parent / "mlartifacts").as_uri()


def _message(e: Exception) -> str:
    return storage.redact(getattr(e, "message", None) or str(e)).strip().splitlines()[0][:1000]


def after_work(fn):
    """Logging after the job's work: a failure is reported, and the job's exit code is kept."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MLflow's, the store's or the network's: the outputs are written already
            print(f"warning: MLflow logging failed ({type(e).__name__}: {_message(e)}); the outputs are "
                  "written; run the same command again to log them", file=sys.stderr)
            return None
    return wrapper


def best_effort(fn):
    """``after_work`` for a function of a ``Run``: nothing to do without one, or once it was logged."""
    @functools.wraps(fn)
    def wrapper(run, *args, **kwargs):
        return None if run is None or run.done else after_work(fn)(run, *args, **kwargs)
    return wrapper


def open_run(tracker: Tracker | None, kind: str, name: str, *, params: dict | None = None,
             tags: dict | None = None, work: bool = False) -> Run | None:
    """Find the MLflow run of ``kind`` ``name`` or create it (RUNNING), with its params and tags.

    ``work``: the job is about to do the run's work (train, search, publish), so a run of that name
    logged to the end stands for earlier work (its outputs since deleted) and a new run is created;
    else such a run is returned ``done``, and an unfinished one (a crash, a resume) is continued.
    A store that refuses (params that differ from those logged under the same name: a config
    changed under an explicit ``name=``) is a ``UserError``."""
    if tracker is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return _open_run(tracker, kind, name, params, tags, work)
    except MlflowException as e:
        raise UserError(f"MLflow {storage.redact(tracker.uri)}, {kind} run {name}: {_message(e)}") from None


def _open_run(tracker: Tracker, kind: str, name: str, params: dict | None, tags: dict | None, work: bool) -> Run:
    from mlflow.entities import Param, RunTag

    c = tracker.client
    key = hashlib.sha256(f"{kind}\n{name}".encode()).hexdigest()[:24]  # safe in a filter string
    found = c.search_runs([tracker.experiment_id], f"tags.`{KEY_TAG}` = '{key}'", max_results=1,
                          order_by=["attributes.start_time DESC"])
    if found and found[0].info.status == "FINISHED":
        if not work:
            return Run(tracker, found[0].info.run_id, True)
        found = []
    all_tags = {KEY_TAG: key, "rnnjobs.kind": kind, "rnnjobs.run": name, **(tags or {})}
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
    else:
        run_id = c.create_run(tracker.experiment_id, run_name=name, tags=all_tags).info.run_id
    # the same values on a rerun (params name the run), which MLflow accepts
    c.log_batch(run_id, params=[Param(k, v) for k, v in params_of(params or {}).items()],
                tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    return Run(tracker, run_id, False)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"model": {"cell": "gru"}}`` -> ``{"model.cell": "gru"}`` (an empty section: no key)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def params_of(d: dict) -> dict[str, str]:
    """Flattened, each value as text (strings as they are, the rest as JSON: null, [0.1, 0.5, 0.9])."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten(d).items()}


def numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, flattened (NaN, text and flags are left out)."""
    return {f"{prefix}{k}": float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _log_metrics(run: Run, values: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    run.tracker.client.log_batch(run.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])


def _log_folder(run: Run, uri: str, endpoint_url: str | None, path: str) -> None:
    with tempfile.TemporaryDirectory(prefix="rnnjobs-mlflow-") as tmp:
        run.tracker.client.log_artifacts(run.run_id, str(storage.download_dir(uri, Path(tmp) / "d", endpoint_url)),
                                         path)


def _log_files(run: Run, folder_uri: str, names: tuple[str, ...], endpoint_url: str | None) -> None:
    """Files of a run's folder that exist (a search that failed has no loss.png), as top-level artifacts."""
    with tempfile.TemporaryDirectory(prefix="rnnjobs-mlflow-") as tmp:
        for name in names:
            uri = storage.join(folder_uri, name)
            if storage.exists(uri, endpoint_url):
                (Path(tmp) / name).write_bytes(storage.read_bytes(uri, endpoint_url))
                run.tracker.client.log_artifact(run.run_id, str(Path(tmp) / name))


def _finish(run: Run, status: str = "FINISHED") -> None:
    run.tracker.client.set_terminated(run.run_id, status=status)
    run.done = status == "FINISHED"


@best_effort
def failed(run: Run) -> None:
    """The job failed: the run is marked FAILED (the same command resumes it, and its MLflow run)."""
    _finish(run, "FAILED")


# ---------------------------------------------------------------------------------------------
# train

def train_run(tracker: Tracker | None, cfg, name: str, params: dict, data: dict, *, work: bool) -> Run | None:
    return open_run(tracker, "train", name, params=params, work=work,
                    tags={"task": cfg.task, "cell": cfg.model.cell, "data_sha256": data["sha256"],
                          "storage": storage.redact(cfg.storage), "workers": cfg.scaling.workers})


@best_effort
def log_train(run: Run, out_uri: str, endpoint_url: str | None) -> None:
    """A finished training run, from ``<out_uri>/metrics.json`` and ``model/``."""
    from mlflow.entities import Metric

    metrics = json.loads(storage.read_bytes(storage.join(out_uri, "metrics.json"), endpoint_url))
    now = int(time.time() * 1000)
    per_epoch = [Metric(k, float(h[k]), now, int(h["epoch"])) for h in metrics["history"] for k in EPOCH_KEYS
                 if isinstance(h.get(k), (int, float)) and math.isfinite(h[k])]
    final = [Metric(k, v, now, 0) for k, v in numbers(metrics.get("final") or {}, "final.").items()]
    run.tracker.client.log_batch(run.run_id, metrics=per_epoch + final + [Metric("best_epoch", metrics["best_epoch"],
                                                                                  now, 0)])
    _log_folder(run, storage.join(out_uri, "model"), endpoint_url, "model")
    _log_files(run, out_uri, ("metrics.json", "loss.png"), endpoint_url)
    _finish(run)


@after_work
def log_release(run: Run | None, released: dict | None) -> None:
    """Train's release step, into the train run (logged to the end before or not): the version and
    the gate; nothing when the step did nothing new (registered and gated before)."""
    if run is None or not released or not (released["registered"] or released["gate"] is not None):
        return
    from mlflow.entities import RunTag

    tags = {"release.model": released["model"], "release.version": released["version"],
            "release.registered": "new" if released["registered"] else "already"}
    run.tracker.client.log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if released["gate"] is not None:
        _log_gate(run, released["gate"], released["model"], released["alias"])


def _log_gate(run: Run, res, name: str, alias: str) -> None:
    from mlflow.entities import RunTag

    d = res.decision
    decision = "promoted" if res.moved else ("passed" if d.promote else "refused")
    tags = {"gate.decision": decision, "gate.candidate": res.candidate,
            "gate.champion": "none" if res.champion is None else res.champion, "gate.alias": alias}
    run.tracker.client.log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    figures = {"candidate": d.candidate, "champion": d.champion or {}, "persistence": d.persistence}
    _log_metrics(run, numbers(figures, "gate."))
    record = {"name": name, "version": res.candidate, "alias": alias, "champion_version": res.champion,
              "decision": decision, "promote": d.promote, "reasons": d.reasons, "figures": figures,
              "settings": d.settings, "record": storage.redact(res.record)}
    record = json.loads(json.dumps(record), parse_constant=lambda _: None)  # NaN (no band) as null
    run.tracker.client.log_dict(run.run_id, record, "gate.json")


# ---------------------------------------------------------------------------------------------
# tune

def search_run(tracker: Tracker | None, search, name: str, data: dict, *, work: bool) -> Run | None:
    from jobs.train import trained_config
    from rnnlib.config import to_dict

    searched = {d.key for d in search.dims}
    base = {k: v for k, v in flatten(trained_config(to_dict(search.base_job))).items() if k not in searched}
    params = {**base, **{f"search.{d.key}": d.describe().split(": ", 1)[1] for d in search.dims},
              **{f"tune.{k}": v for k, v in dataclasses.asdict(search.settings).items()}}
    return open_run(tracker, "tune", name, params=params, work=work,
                    tags={"task": search.base.get("task", "forecast"), "data_sha256": data["sha256"]})


def tune_callbacks(run: Run | None, name: str) -> list:
    """Ray Tune's MLflow logger: a child run of the search's run per trial, logged from the driver."""
    if run is None or run.done:
        return []
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # the documented home of Tune's MLflow logger

    return [MLflowLoggerCallback(run.tracker.uri, experiment_name=run.tracker.experiment,
                                 tags={MLFLOW_PARENT_RUN_ID: run.run_id, "rnnjobs.kind": "trial",
                                       "rnnjobs.search": name})]


@best_effort
def log_search(run: Run, exp_uri: str, endpoint_url: str | None) -> None:
    """A finished search, from its results.csv, metrics.json (the best trial's), best.yaml and model/."""
    import io

    import pandas as pd
    from mlflow.entities import RunTag

    df = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(exp_uri, "results.csv"), endpoint_url)))
    ok = df[df["status"] == "done"]
    values = {"trials": len(df), "failed": len(df) - len(ok)}
    if len(ok):
        values["best_val_loss"] = float(ok["best_val_loss"].min())
        run.tracker.client.log_batch(run.run_id, tags=[RunTag("best_trial", str(ok.iloc[0]["trial_id"]))])
    metrics_uri = storage.join(exp_uri, "metrics.json")
    if storage.exists(metrics_uri, endpoint_url):
        values.update(numbers(json.loads(storage.read_bytes(metrics_uri, endpoint_url)).get("final") or {}, "final."))
        _log_folder(run, storage.join(exp_uri, "model"), endpoint_url, "model")
    _log_metrics(run, values)
    _log_files(run, exp_uri, ("results.csv", "best.yaml", "metrics.json", "search.png"), endpoint_url)
    _finish(run)


# ---------------------------------------------------------------------------------------------
# score

def score_params(manifest: dict) -> dict:
    m = manifest["model"]
    reg = m.get("registry") or {}
    return {"mode": manifest["mode"], "as_of": manifest["as_of"], "model": reg.get("ref") or m["uri"],
            "model.uri": m["uri"], "model.version": reg.get("version"), "model.weights_sha256": m["weights_sha256"],
            "input": manifest["input"]["uri"], "input.files": manifest["input"]["files"]}


@after_work
def log_score(tracker: Tracker | None, run_uri: str, endpoint_url: str | None, *, published: bool) -> None:
    """One MLflow run per published score run (logged once, from its manifest); ``published``:
    this job published it just now."""
    if tracker is None:
        return
    from rnnlib import publish

    _, manifest = publish.read_manifest(run_uri, endpoint_url)
    day = run_uri.rstrip("/").split("/as_of=")[-1].split("/")[0]
    run = open_run(tracker, "score", f"score-{day}-{manifest['run_id']}", params=score_params(manifest),
                   tags={"as_of": day, "run_uri": storage.redact(run_uri)}, work=published)
    if run.done:
        return
    values = numbers(manifest["counts"], "counts.")
    if manifest["mode"] == "backtest":
        values.update(backtest_means(run_uri, endpoint_url, manifest))
    _log_metrics(run, values)
    run.tracker.client.log_dict(run.run_id, manifest, "manifest.json")
    _finish(run)


def backtest_means(run_uri: str, endpoint_url: str | None, manifest: dict) -> dict[str, float]:
    """The mean over tickers of a backtest's per-ticker rmae, coverage and pinball (those it has)."""
    from rnnlib import publish

    per_ticker = publish.read_kind(run_uri, "metrics", endpoint_url, manifest=manifest)
    return {f"backtest.{k}": float(per_ticker[k].mean()) for k in ("rmae", "coverage", "pinball")
            if k in per_ticker and per_ticker[k].notna().any()}


# ---------------------------------------------------------------------------------------------
# models promote / gate

def connect_flags(args) -> Tracker | None:
    uri = getattr(args, "mlflow_uri", None)
    return open_store(uri, args.mlflow_experiment, "--mlflow-uri") if uri else None


@after_work
def log_promotion(tracker: Tracker | None, move: dict, version_info: dict) -> None:
    """An alias move by ``rnnjobs models promote``: its own run, named for the move (never logged before)."""
    if tracker is None:
        return
    name = f"promote {move['name']}@{move['alias']} -> {move['version']} (move {move['seq']})"
    params = {k: move[k] for k in ("name", "alias", "version", "previous", "reason", "when")}
    run = open_run(tracker, "promotion", name, params=params, tags={"train_run": version_info.get("run") or "-"})
    _log_metrics(run, numbers(move.get("figures") or {}, "figures."))
    run.tracker.client.log_dict(run.run_id, move, "move.json")
    _finish(run)


@after_work
def log_gate(tracker: Tracker | None, name: str, alias: str, histories: str, res) -> None:
    """A decision of ``rnnjobs models gate``: its own run (the record's file name makes it unique)."""
    if tracker is None:
        return
    d = res.decision
    params = {"name": name, "version": res.candidate, "alias": alias, "champion": res.champion,
              "histories": storage.redact(histories), **{f"settings.{k}": v for k, v in d.settings.items()}}
    run = open_run(tracker, "gate", f"gate {name} {res.candidate} vs {alias} ({Path(res.record).stem})",
                   params=params)
    _log_gate(run, res, name, alias)
    _finish(run)
