"""``rnnjobs tune CONFIG [key=value ...]``: a Ray Tune search over any config keys.

parse and check the space and the data (before Ray starts) -> ``ray.tune.Tuner`` with ASHA
(or FIFO) and a random or Optuna searcher -> results table, ``best.yaml``, the best trial's
model exported like the train job's, and a plot, all under ``<storage>/<name>/``.

Two trial modes run the same rnnlib code as ``rnnjobs train``: ``process`` trains in the trial's
own actor (right for small RNNs; fractional CPUs or GPUs per trial), ``trainer`` builds a
TorchTrainer inside the trial and reports through ``TuneReportCallback``.

The experiment name is derived from the config, so the same command after the driver died
resumes the search with ``Tuner.restore``: finished trials are kept, unfinished and errored ones
continue from their last checkpoint, and the searcher keeps its state.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import time

import pandas as pd
import yaml

from jobs import tracking
from jobs.train import export_model, train_loop, trained_part
from rnnlib import storage
from rnnlib.bundle import META, WEIGHTS
from rnnlib.config import JobConfig, to_dict
from rnnlib.device import check_precision, choose
from rnnlib.errors import UserError
from rnnlib.fit import STATE_FILE, TrainState
from rnnlib.plots import search_png
from rnnlib.search import Search, load_search, plot_keys, short, stop_reason, top_trials_table
from rnnlib.tasks import make_task

# Settings that change which trials run; the others (concurrency, resources) may change on resume.
_SEARCH_SETTINGS = ("num_samples", "searcher", "scheduler", "max_t", "grace_period", "reduction_factor", "seed",
                    "trial")
RESULTS = "results.parquet"
CHECKPOINT_FILES = (WEIGHTS, META, STATE_FILE)  # what rnnlib.fit.save_checkpoint writes
STATUS_EVERY_S = 60  # a line while trials wait for resources
TRAINER_DRIVER_CPUS = 0.1  # a trainer trial only drives its Train workers, which reserve their own CPUs


def experiment_name(search: Search, data: dict) -> str:
    """Deterministic: ``tune-<task>-<hash of the base job, the data (its fingerprint), the space and
    the search settings>``: new data makes a new search, as it makes a new training run."""
    s = search.settings
    if s.name:
        return s.name
    what = {"job": trained_part(search.base), "data": data["sha256"], "search": search.search_raw,
            "tune": {k: getattr(s, k) for k in _SEARCH_SETTINGS}}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"tune-{search.base.get('task', 'forecast')}-{digest}"


def _trial_job(search: Search, params: dict, **top_level) -> JobConfig:
    """A trial's job: the sampled params, and at most ``max_t`` epochs."""
    cfg = search.trial_job(params, **top_level)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=search.max_t))


def process_trial(config: dict, search: Search, exp_uri: str, resumed: bool = False) -> None:
    """A Tune function trial: train in this actor, one report (and checkpoint) per epoch."""
    import ray.tune
    import torch

    from jobs.ray_setup import quiet_tune_trial

    quiet_tune_trial()
    torch.set_num_threads(max(1, int(search.settings.cpus_per_trial)))
    device = choose(search.settings.gpus_per_trial > 0)  # Ray made the trial's GPU share visible

    def report(metrics: dict, folder: str | None) -> None:
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder) if folder else None)

    trial = storage.join(exp_uri, trial_folder(ray.tune.get_context().get_trial_id()))
    checkpoint, recorded = _resume_point(trial, search.base_job.endpoint_url, ray.tune.get_checkpoint(), resumed)
    train_loop(_trial_job(search, config), checkpoint, report, device=device, verbose=False, recorded=recorded)


def _resume_point(trial_uri: str, endpoint: str | None, given, resumed: bool) -> tuple[object, int | None]:
    """Where a trial starts so that each epoch is trained and reported exactly once: (checkpoint,
    the epochs its driver has recorded when the checkpoint may hold more, else None).

    A trial persists its checkpoint before it reports, so its newest complete checkpoint is where it
    got to. In a search resumed after its driver died (``resumed``), Tune's saved state and the
    trials' result.json files were saved at different moments, and both can be behind: the state
    can name an older checkpoint (``given``), and a finished trial can still be running in it. The
    new driver's record of a trial is its result.json as saved if the state names a checkpoint of
    it, else empty (Tune's JsonLoggerCallback restores the file only then); the epochs of the
    newest checkpoint beyond that record are reported again from its history, and training goes on
    from there. With the same driver (an actor restarted) its record ends at ``given``. Costs a
    LIST per trial start, and a GET of result.json in a resumed search."""
    newest = _newest_checkpoint(trial_uri, endpoint, given)
    if resumed:
        if given is None:
            return newest, 0
        try:
            lines = storage.read_bytes(storage.join(trial_uri, "result.json"), endpoint).decode().splitlines()
        except UserError:  # none saved
            lines = []
        return newest, max((json.loads(line)["epoch"] for line in lines if line.strip()), default=0)
    if newest is given:
        return given, None
    return newest, _state(given).epoch if given else 0


def _checkpoint_dirs(fs, folder: str) -> list[str]:
    """The paths of the ``checkpoint_*`` folders in a trial's folder on ``fs``, oldest first."""
    import pyarrow.fs as pafs

    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))


def _state(checkpoint) -> TrainState:
    """A Ray ``Checkpoint``'s train state, reading its state file alone (not the weights)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as f:
        return TrainState.read(io.BytesIO(f.read()))


def _newest_checkpoint(trial_uri: str, endpoint: str | None, given):
    """The newest complete checkpoint in a trial's folder if newer than ``given``, else ``given``."""
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

    fs, folder = storage.filesystem(trial_uri, endpoint)
    since = given.path.rstrip("/").rsplit("/", 1)[-1] if given else ""
    for path in reversed(_checkpoint_dirs(fs, folder)):
        if path.rsplit("/", 1)[-1] <= since:
            break
        if all(fs.get_file_info(f"{path}/{f}").type == pafs.FileType.File for f in CHECKPOINT_FILES):
            return Checkpoint(path, filesystem=fs)
    return given


def trainer_trial(config: dict, search: Search, exp_uri: str) -> None:
    """A Tune function trial that drives a multi-worker TorchTrainer (the Train V2 pattern).

    The trainer's name is the trial id, so a resumed trial resumes its Train run from storage."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.train import build_trainer

    cfg = _trial_job(search, config, storage=storage.join(exp_uri, "trainer"))
    trial_id = ray.tune.get_context().get_trial_id()
    build_trainer(cfg, f"trial-{trial_id}", callbacks=[TuneReportCallback()], verbose=False).fit()


def _param_space(search: Search) -> dict:
    from ray import tune

    make = {"choice": lambda a: tune.choice(list(a)), "grid": lambda a: tune.grid_search(list(a)),
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1)}  # our bounds are inclusive
    return {d.key: make[d.kind](d.args) for d in search.dims}


def _progress(search: Search):
    """A ``ray.tune.Callback`` that prints one line per finished trial."""
    from ray import tune

    patience = search.base_job.train.patience

    class Progress(tune.Callback):
        def __init__(self):
            self.done, self.last_status = 0, time.monotonic()

        def on_step_end(self, iteration, trials, **info):
            """Every STATUS_EVERY_S while trials wait for resources (an autoscaling cluster adding nodes,
            or a trial that fits no node): how many run and wait, so a quiet search is not a hung one."""
            if time.monotonic() - self.last_status < STATUS_EVERY_S:
                return
            self.last_status = time.monotonic()
            count = collections.Counter(t.status for t in trials)
            if count["PENDING"]:
                print(f"[{self.done}/{search.num_trials}] {count['RUNNING']} running, {count['PENDING']} waiting "
                      "for resources (on an autoscaling cluster: until its nodes start)", flush=True)

        def _line(self, trial, what: str) -> None:
            self.done += 1
            r = trial.last_result or {}
            params = "  ".join(f"{d.key.split('.')[-1]}={short(trial.config.get(d.key))}" for d in search.dims)
            print(f"[{self.done}/{search.num_trials}] {trial.trial_id}  {params}  "
                  f"epochs {r.get('epoch', 0)}  val {r.get('val_loss', float('nan')):.4f}  {what}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            why = stop_reason(r.get("epoch", 0), r.get("stale", 0), search.max_t, patience)
            self._line(trial, {"max_t": "", "patience": "(no better val loss: patience)",
                               "asha": "(stopped by ASHA)"}[why])

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED (see the table at the end)")

    return Progress()


def trial_folder(trial_id: str) -> str:
    """A trial's folder in the experiment (Tune's trial_dirname_creator)."""
    return f"trial_{trial_id}"


def _trial_dir(trial) -> str:
    return trial_folder(trial.trial_id)


def _prune(search: Search, fs, exp_path: str, result_grid, df: pd.DataFrame, best_trial: str, best_path: str) -> None:
    """Once the search is over, delete the checkpoints nothing needs (DELETE requests, which S3 does
    not bill): all of a trial ASHA stopped (never resumed, not the best), and of a process trial
    that ran on all but its best. A trainer trial's Train run keeps its own (train.keep_checkpoints)."""
    stopped = dict(zip(df["trial_id"], df["stopped"]))
    for r in result_grid:
        trial_id = (r.metrics or {}).get("trial_id")
        unneeded = stopped.get(trial_id) == "asha" and trial_id != best_trial
        if search.settings.trial == "process":
            folder = f"{exp_path}/{trial_folder(trial_id)}"
            if unneeded:
                keep = None
            elif trial_id == best_trial:
                keep = best_path
            elif r.best_checkpoints:
                keep = min(r.best_checkpoints, key=lambda cm: cm[1]["val_loss"])[0].path
            else:
                continue  # Tune knows no checkpoint of it (a trial resumed by replaying): all are kept
        elif unneeded:
            folder, keep = f"{exp_path}/trainer/trial-{trial_id}", None  # trainer_trial's run
        else:
            continue
        for path in _checkpoint_dirs(fs, folder):
            if path != keep:
                fs.delete_dir(path)


def trial_bundles(search: Search) -> list[dict[str, float]]:
    """The resource bundles one trial asks Ray for, each placed on one node: a process trial's CPUs
    and GPUs, or a trainer trial's driver and each of its Train workers."""
    s, job = search.settings, search.base_job
    if s.trial == "process":
        return [{"CPU": s.cpus_per_trial, "GPU": s.gpus_per_trial}]
    worker = {"CPU": job.scaling.cpus_per_worker, "GPU": 1.0 if job.scaling.gpu else 0.0}
    return [{"CPU": TRAINER_DRIVER_CPUS, "GPU": 0.0}] + [worker] * job.scaling.workers


def _max_concurrent(search: Search) -> int:
    """tune.max_concurrent_trials, or for Optuna when it is 0 the trials the cluster holds now.

    A model-based searcher learns only from finished trials: left unlimited, Tune asks it for every
    trial at once and TPE degrades to random sampling. On a cluster that scales up from zero the
    count is what is there at the start (at least 1); set tune.max_concurrent_trials for the size
    it will reach."""
    s = search.settings
    if s.max_concurrent_trials or s.searcher != "optuna":
        return s.max_concurrent_trials
    import ray

    have = ray.cluster_resources()
    need = {k: sum(b[k] for b in trial_bundles(search)) for k in ("CPU", "GPU")}
    n = max(1, int(min(have.get(k, 0) // v for k, v in need.items() if v > 0)))
    print(f"optuna: at most {n} trial(s) at once, what the cluster's {have.get('CPU', 0):g} CPUs and "
          f"{have.get('GPU', 0):g} GPUs hold now (tune.max_concurrent_trials sets it)")
    return n


def _experiment(base: JobConfig, name: str):
    """(the storage's pyarrow filesystem, the storage's path and the experiment's on it)."""
    fs, root = storage.filesystem(base.storage, base.endpoint_url)
    return fs, root, f"{root.rstrip('/')}/{name}"


def _tuner(search: Search, name: str, base: JobConfig, callbacks: list):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = search.settings
    fs, root, exp_path = _experiment(base, name)
    exp_uri = storage.join(base.storage, name)
    resumed = tune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    if s.trial == "process":
        fn = tune.with_parameters(process_trial, search=search, exp_uri=exp_uri, resumed=resumed)
        resources = trial_bundles(search)[0]
    else:
        fn = tune.with_parameters(trainer_trial, search=search, exp_uri=exp_uri)
        resources = {"CPU": TRAINER_DRIVER_CPUS}
    trainable = tune.with_resources(fn, resources)
    if resumed:
        print(f"resuming {exp_uri}: finished trials are kept, the others continue from their checkpoints")
        # the RunConfig, its callbacks included (MLflow's, with the search's run as parent), comes back
        # from the experiment's tuner.pkl: the search goes on as it started
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    if s.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=s.seed)
        except ImportError:
            raise UserError("tune.searcher=optuna needs optuna: pip install 'rnnjobs[optuna]' "
                            "(or use tune.searcher=random)") from None
    else:
        searcher = BasicVariantGenerator(random_state=s.seed)
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=search.max_t, grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor)
                 if s.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=_param_space(search),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", num_samples=s.num_samples,
                                    max_concurrent_trials=_max_concurrent(search) or None,
                                    search_alg=searcher, scheduler=scheduler, trial_dirname_creator=_trial_dir,
                                    # a new trial runs in a finished trial's actor: no process to start,
                                    # torch imported once (bench/tune_scale.py)
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs, verbose=0,
            callbacks=[_progress(search), *callbacks],
            failure_config=tune.FailureConfig(max_failures=base.train.max_failures),
            # Every checkpoint is kept while the search runs, ranked by val loss; _prune deletes them once
            # it is over. Tune's num_to_keep deletes a trial's worse checkpoints as better ones come, and
            # its experiment state, saved now and then, can still name a deleted one: the trial cannot be
            # resumed after the driver dies ("Could not recover from checkpoint", seen in
            # test_driver_killed_mid_search_on_s3_resumes_each_epoch_once). Keeping all also ends the
            # state uploads Tune forces after every num_to_keep checkpoints of a trial.
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute="val_loss",
                                                    checkpoint_score_order="min")))


def _history(r, exp_uri: str, endpoint: str | None) -> pd.DataFrame | None:
    """A trial's results, one row per epoch: its result.json, or, if the driver died after saving
    the trial as finished but before its result.json reached storage, its newest checkpoint's
    history (trials Tune resumes re-report what their file lacks: _resume_point)."""
    df = r.metrics_dataframe
    trial_id = (r.metrics or {}).get("trial_id")
    if (df is not None and len(df)) or not trial_id:
        return df
    newest = _newest_checkpoint(storage.join(exp_uri, trial_folder(trial_id)), endpoint, None)
    if newest is None:
        return df
    return pd.DataFrame([{**h, "trial_id": trial_id} for h in _state(newest).reports(0)])


def _rows(trials, search: Search) -> pd.DataFrame:
    """One row per trial (``trials``: its ``ray.tune.Result`` and ``_history``): its params, status,
    why it stopped, epochs and losses."""
    patience = search.base_job.train.patience
    rows = []
    for r, df in trials:
        # the last result the trial wrote; Tune's own (r.metrics) is from its last saved state, older
        # for a trial that finished after that save and before the driver died (see _resume_point)
        last = df.iloc[-1].to_dict() if df is not None and len(df) else (r.metrics or {})
        epochs = int(last.get("epoch", 0))
        row = {"trial_id": last.get("trial_id"),
               **{d.key: r.config.get(d.key) for d in search.dims}, "status": "error" if r.error else "done"}
        stopped = "error" if r.error else stop_reason(epochs, last.get("stale", 0), search.max_t, patience)
        has = df is not None and len(df) and "val_loss" in df
        best = df.loc[df["val_loss"].idxmin()] if has else None
        row.update(stopped=stopped, epochs=epochs,
                   best_val_loss=float(best["val_loss"]) if has else float("nan"),
                   best_epoch=int(best["epoch"]) if has else 0,
                   last_val_loss=float(last.get("val_loss", float("nan"))),
                   train_seconds=float(df["seconds"].sum()) if has else 0.0,
                   error=_last_line(r.error) if r.error else "")
        rows.append(row)
    return pd.DataFrame(rows).sort_values("best_val_loss", na_position="last").reset_index(drop=True)


def _last_line(error: BaseException) -> str:
    """The cause of a trial's error: the last line of Ray's wrapped traceback."""
    lines = [li for li in str(error).strip().splitlines() if li.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _best_checkpoint(r, search: Search, fs, exp_path: str, row: dict):
    """The checkpoint of the best epoch (``row``: its results row) of a trial's ``ray.tune.Result``,
    as a Ray ``Checkpoint``."""
    from ray.tune import Checkpoint

    if search.settings.trial == "process":
        # found on storage: Tune knows only the checkpoints reported with a result, and a resumed
        # trial reports again without one (_resume_point)
        folder = f"{exp_path}/{trial_folder(row['trial_id'])}"
        for path in _checkpoint_dirs(fs, folder):
            checkpoint = Checkpoint(path, filesystem=fs)
            if _state(checkpoint).epoch == row["best_epoch"]:
                return checkpoint
        raise RuntimeError(f"{folder}: no checkpoint of epoch {row['best_epoch']}")
    # trainer trials: TuneReportCallback adds the Train checkpoint's path to each result
    df = r.metrics_dataframe.dropna(subset=["checkpoint_path"])
    df = df[[fs.get_file_info(p).type.name == "Directory" for p in df["checkpoint_path"]]]  # still kept
    return Checkpoint(df.loc[df["val_loss"].idxmin(), "checkpoint_path"], filesystem=fs)


def best_yaml(cfg: JobConfig, row: dict) -> str:
    """A complete train config for the best trial (with the full ``train.epochs`` budget)."""
    header = (f"# The best trial ({row['trial_id']}) of a search: best val loss {row['best_val_loss']:.5f} "
              f"at epoch {row['best_epoch']}.\n# Train it: rnnjobs train best.yaml\n")
    return header + yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _write_df(df: pd.DataFrame, uri_base: str, endpoint: str | None) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(uri_base + ".csv", df.to_csv(index=False).encode(), endpoint)
    storage.write_bytes(uri_base + ".parquet", buf.getvalue(), endpoint)  # last: it marks the search done


def run(config: str, overrides: list[str]) -> int:
    return search_job(load_search(config, overrides))[0]


def search_job(search: Search) -> tuple[int, str]:
    """Run (or resume, or find finished) the search; (exit code, the experiment's URI)."""
    base = search.base_job
    s = search.settings
    check_precision(base.train.precision, s.gpus_per_trial > 0 if s.trial == "process" else base.scaling.gpu)
    tracker = tracking.connect(base.tracking)  # None unless tracking.mlflow_uri is set
    data = make_task(base).fingerprint()  # data errors surface here, before Ray starts
    name = experiment_name(search, data)
    exp_uri = storage.join(base.storage, name)
    grid = f" ({s.num_samples} x {search.grid_size} grid points)" if search.grid_size > 1 else ""
    print(f"search {name}: {search.num_trials} trials{grid}, {s.searcher} search, {s.scheduler} "
          f"(max {search.max_t} epochs), {s.trial} trials; storage {exp_uri}")
    for d in search.dims:
        print(f"  {d.describe()}")
    for w in search.warnings():
        print(f"warning: {w}")
    results_uri = storage.join(exp_uri, RESULTS)
    finished = storage.exists(results_uri, base.endpoint_url)
    tracked = tracking.search_run(tracker, search, name, data, work=not finished)
    if finished:
        df = pd.read_parquet(io.BytesIO(storage.read_bytes(results_uri, base.endpoint_url)))
        print(f"already finished (delete {exp_uri} to search again):\n{top_trials_table(df, search.settings.top)}")
        tracking.log_search(tracked, exp_uri, base.endpoint_url)  # unless its MLflow run was logged before
        return 0, exp_uri

    from jobs.ray_setup import init_ray

    # The experiment state is uploaded on Tune's adaptive period (TUNE_GLOBAL_CHECKPOINT_S=auto), each
    # time the whole state: bench/tune_requests.py counts the requests. _resume_point makes up for what
    # it has not saved when the driver dies.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its banner and tables; Progress prints a line per trial
    init_ray()
    tuner = _tuner(search, name, base, tracking.tune_callbacks(tracked, name))
    result_grid = tuner.fit()
    trials = [(r, _history(r, exp_uri, base.endpoint_url)) for r in result_grid]
    df = _rows(trials, search)
    ok = df[df["status"] == "done"]
    if ok.empty:
        print(f"every trial failed; the first error:\n{df['error'].iloc[0]}")
        tracking.failed(tracked)
        return 1, exp_uri
    best_row = ok.iloc[0].to_dict()
    params = {d.key: best_row[d.key] for d in search.dims}
    best_cfg = search.trial_job(params)
    fs, _, exp_path = _experiment(base, name)
    ((r, best_history),) = [(r, h) for r, h in trials if (r.metrics or {}).get("trial_id") == best_row["trial_id"]]
    ckpt = _best_checkpoint(r, search, fs, exp_path, best_row)
    by_epoch = {int(h["epoch"]) - 1: h for h in best_history.to_dict("records")}  # a replayed epoch: last
    history = [{"epoch": e, **{k: by_epoch[e][k] for k in ("train_loss", "val_loss", "seconds", "train_seconds")}}
               for e in sorted(by_epoch)]
    best_task = make_task(best_cfg)
    metrics = export_model(best_cfg, best_task, ckpt, history, exp_uri, f"{name} best trial "
                           f"{best_row['trial_id']}", trial=best_row["trial_id"], data=data)
    _prune(search, fs, exp_path, result_grid, df, best_row["trial_id"], ckpt.path)
    storage.write_bytes(storage.join(exp_uri, "best.yaml"), best_yaml(best_cfg, best_row).encode(),
                        base.endpoint_url)
    x, color = plot_keys([d.key for d in search.dims])
    storage.write_bytes(storage.join(exp_uri, "search.png"),
                        search_png(df, x, color, name, f"best val loss: {best_task.loss_label}",
                                   lines=len(search.dims) <= 2),
                        base.endpoint_url)
    _write_df(df, storage.join(exp_uri, "results"), base.endpoint_url)
    tracking.log_search(tracked, exp_uri, base.endpoint_url)
    epochs = int(df["epochs"].sum())
    print(f"\n{len(df)} trials, {len(df) - len(ok)} failed, {(df['stopped'] == 'asha').sum()} stopped early by "
          f"ASHA; {epochs} trial-epochs of {len(df) * search.max_t} without early stopping")
    print(top_trials_table(df, search.settings.top))
    print(f"best trial:\n{best_task.metrics_text(metrics['final'])}")
    print(f"results: {results_uri} (and results.csv)\nbest config: {storage.join(exp_uri, 'best.yaml')}  "
          f"(rnnjobs train it as is)\nbest model: {storage.join(exp_uri, 'model')}\n"
          f"plot: {storage.join(exp_uri, 'search.png')}")
    return 0, exp_uri
