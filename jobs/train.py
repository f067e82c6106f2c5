"""``rnnjobs train CONFIG [key=value ...]``: Ray Train (TorchTrainer) for both tasks.

parse -> check config and data (before Ray starts) -> TorchTrainer.fit -> export the best
checkpoint as ``<storage>/<name>/model/`` with ``metrics.json`` and ``loss.png``.

The run name is derived from the config and the data (by content, ``task.fingerprint()``), so
running the same command again after a crash resumes from the last committed checkpoint (Ray
Train restores the run from storage), a finished run is not trained again, and new data (a new
day of prices, a corrected row) makes a new run. ``data.end`` pins the history for a backfill.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from jobs import tracking
from rnnlib import storage
from rnnlib.bundle import load_bundle, save_bundle
from rnnlib.config import JobConfig, job_from_dict, load_job, to_dict
from rnnlib.device import Precision, check_precision, device_of, place
from rnnlib.errors import UserError
from rnnlib.fit import TrainState, make_optimizer, run_epoch, save_checkpoint
from rnnlib.loop import seed_everything
from rnnlib.plots import loss_curve_png
from rnnlib.tasks import Shard, make_task, task_class

# Keys that do not change what is trained, so they do not change the run name: a crashed run
# can be resumed with more workers, another storage endpoint or more tolerated failures.
_NOT_TRAINED = ("name", "storage", "endpoint_url", "scaling", "release", "tracking")
_NOT_TRAINED_IN_TRAIN = ("max_failures", "keep_checkpoints")
# Keys added after run names existed, with the value every earlier run had: at that value they
# are left out of the name, so an earlier run still resumes and a finished one is still found.
_ADDED_LATER = {"train": {"precision": "fp32"}, "data": {"delimiter": None, "date_format": None, "end": None}}


def trained_config(config: dict) -> dict:
    """The keys of a config (as plain data) that determine the trained model, with their values."""
    d = {k: v for k, v in config.items() if k not in _NOT_TRAINED}
    d["train"] = {k: v for k, v in d.get("train", {}).items() if k not in _NOT_TRAINED_IN_TRAIN}
    return d


def trained_part(config: dict) -> dict:
    """What a run's name covers of a config: ``trained_config`` less the keys added later at the
    value every earlier run had."""
    d = trained_config(config)
    for section, added in _ADDED_LATER.items():
        if isinstance(d.get(section), dict):
            d[section] = {k: v for k, v in d[section].items() if k not in added or v != added[k]}
    return d


def identity(config: dict, data: dict) -> dict:
    """What a run's name stands for: the trained part of the config and the data's fingerprint."""
    return {"config": trained_part(config), "data": data["sha256"]}


def run_name(cfg: JobConfig, data: dict) -> str:
    """Deterministic: ``<task>-<cell>-<hash of the config and data>`` (``data``: the task's fingerprint)."""
    digest = hashlib.sha256(json.dumps(identity(to_dict(cfg), data), sort_keys=True).encode()).hexdigest()[:10]
    return cfg.name or f"{cfg.task}-{cfg.model.cell}-{digest}"


def train_loop(cfg: JobConfig, checkpoint, report, *, rank: int = 0, world: int = 1,
               device: torch.device | str = "cpu", prepare=lambda model: model, verbose: bool = True,
               recorded: int | None = None, shard: Shard | None = None) -> None:
    """Epochs from the last checkpoint (a Ray ``Checkpoint`` or None) until done, on ``device``.

    Shared by Ray Train workers and Tune process trials: ``report(metrics, folder)`` hands each
    epoch's metrics and, on rank 0, a checkpoint folder to Ray; ``prepare`` wraps the model
    (DDP under Ray Train). ``recorded``: the epochs Ray has recorded, when the checkpoint holds
    more (their reports were lost with a driver): those are reported again, without a checkpoint,
    before training goes on. ``shard``: this worker's part of the data (``Task.plan``), read here;
    the val loss is then the mean over every worker's validation windows."""
    import torch.distributed as dist

    seed_everything(cfg.train.seed)
    task = make_task(cfg, shard)
    if shard is not None:
        mine = task.for_other_shards()
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
        task.from_other_shards({k: v for other in everyone for k, v in other.items()})
    model = place(task.build_model(), device)
    opt = make_optimizer(model, cfg)
    precision = Precision(cfg.train.precision, device)
    state = TrainState()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = TrainState.restore(Path(d), model, opt)
        state.resumed_at.append(state.epoch)
    start_epoch = state.epoch
    for lost in state.reports(recorded) if recorded is not None else []:
        report({**lost, "start_epoch": start_epoch, "torch_threads": torch.get_num_threads(),
                "device": str(device_of(model))}, None)
    wrapped = prepare(model)
    while not state.done(cfg):
        started = time.time()  # epoch to epoch, this also counts the report and checkpoint a user waits for
        train_loss, val_loss, secs, train_secs = run_epoch(wrapped, opt, task, cfg, state, rank=rank, world=world,
                                                           precision=precision, eval_model=model)
        if world > 1:  # mean train loss over the workers (equal shares); val loss over all windows
            n_val = len(task.data.val) if shard is not None else 1
            t = torch.tensor([train_loss, val_loss * n_val, n_val], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            train_loss = t[0].item() / world
            val_loss = t[1].item() / t[2].item() if shard is not None else val_loss
        state.record(train_loss, val_loss, secs, train_secs)
        if rank == 0 and verbose:
            print(f"epoch {state.epoch}/{cfg.train.epochs}  train {train_loss:.4f}  val {val_loss:.4f}  "
                  f"({secs:.1f}s)", flush=True)
        metrics = {"epoch": state.epoch, "train_loss": train_loss, "val_loss": val_loss, "stale": state.stale,
                   "start_epoch": start_epoch, "seconds": secs, "train_seconds": train_secs,
                   "torch_threads": torch.get_num_threads(), "device": str(device_of(model)),
                   "started": started}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_checkpoint(Path(tmp), model, opt, task, cfg, state)
            report(metrics, tmp if rank == 0 else None)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from jobs.ray_setup import quiet_train_worker

    quiet_train_worker()
    ctx = ray.train.get_context()

    def report(metrics: dict, folder: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    shards = config.get("shards")
    train_loop(job_from_dict(config["job"]), ray.train.get_checkpoint(), report, rank=ctx.get_world_rank(),
               world=ctx.get_world_size(), device=ray.train.torch.get_device(),
               prepare=ray.train.torch.prepare_model, verbose=config.get("verbose", True),
               shard=shards[ctx.get_world_rank()] if shards else None)


def build_trainer(cfg: JobConfig, name: str, callbacks: list | None = None, verbose: bool = True,
                  shards: list[Shard] | None = None):
    """The TorchTrainer for a config: scaling, storage, failures and checkpoints all from it.
    ``shards``: each worker's part of the data (``Task.plan``); None: every worker loads all of it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    fs, path = storage.filesystem(cfg.storage, cfg.endpoint_url)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": to_dict(cfg), "verbose": verbose, "shards": shards},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.workers, use_gpu=cfg.scaling.gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min")),
    )


def run(config: str, overrides: list[str]) -> int:
    return train(load_job(config, overrides))[0]


def train(cfg: JobConfig) -> tuple[int, str]:
    """Train (or resume, or find finished) the run ``cfg`` names; (exit code, the run's URI)."""
    check_precision(cfg.train.precision, cfg.scaling.gpu)
    if cfg.release.model:  # before an hour of training, not after it
        from rnnlib.registry import registry_uri

        registry_uri(cfg.release.registry, "release.registry")
    tracker = tracking.connect(cfg.tracking)  # None unless tracking.mlflow_uri is set
    task = make_task(cfg)  # data errors surface here, before Ray starts; no training windows are built here
    data = task.fingerprint()
    name = run_name(cfg, data)
    out_uri = storage.join(cfg.storage, name)
    shards = task.plan(cfg.scaling.workers)
    print(task.summary())
    print(f"run {name}: {cfg.task}, {cfg.model.cell} {cfg.model.layers}x{cfg.model.hidden}, "
          f"{cfg.scaling.workers} worker(s){' on GPU' if cfg.scaling.gpu else ''}, storage {out_uri}\n"
          f"data: {task.describe_data(data)}")
    if shards:
        sizes = sorted(len(s.tickers) for s in shards)
        print(f"each worker reads its own {sizes[0]}-{sizes[-1]} series and trains on {shards[0].share} of "
              f"their windows per epoch ({sum(s.windows for s in shards) - shards[0].share * len(shards)} of "
              f"{sum(s.windows for s in shards)} left out per epoch, a different choice each epoch)")
    finished = _finished(out_uri, cfg, data)
    tracked = tracking.train_run(tracker, cfg, name, trained_config(to_dict(cfg)), data, work=finished is None)
    if finished is not None:
        print(f"already finished: {storage.join(out_uri, 'model')} (same config and data; delete {out_uri} "
              "to train again)")
        tracking.log_train(tracked, out_uri, cfg.endpoint_url)  # unless its MLflow run was logged before
        _release(cfg, out_uri, name, data, tracked)
        return 0, out_uri

    import ray.train

    from jobs.ray_setup import init_ray

    init_ray()
    trainer = build_trainer(cfg, name, shards=shards)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        cause = str(e).strip().splitlines()
        print(f"training failed after {cfg.train.max_failures} allowed worker failure(s): "
              f"{cause[0] if cause else e}\n(raise train.max_failures to tolerate more; the run resumes "
              f"from its last checkpoint when you run the same command again)")
        tracking.failed(tracked)
        return 1, out_uri
    best = result.get_best_checkpoint(metric="val_loss", mode="min")
    if best is None:
        raise UserError(f"run {name} produced no checkpoint")
    with result.checkpoint.as_directory() as d:  # latest: holds the full history
        final_state = TrainState.read(Path(d))
    metrics = export_model(cfg, task, best, final_state.history, out_uri, name,
                           resumed_from_epoch=max(final_state.resumed_at, default=0),
                           resumed_at=final_state.resumed_at, data=data)
    _print_summary(cfg, metrics, out_uri)
    tracking.log_train(tracked, out_uri, cfg.endpoint_url)
    _release(cfg, out_uri, name, data, tracked)
    return 0, out_uri


def _release(cfg: JobConfig, out_uri: str, name: str, data: dict, tracked: tracking.Run | None) -> None:
    if cfg.release.model:
        from jobs.models import release

        tracking.log_release(tracked, release(cfg, storage.join(out_uri, "model"), name, data))


def export_model(cfg: JobConfig, task, checkpoint, history: list[dict], out_uri: str, name: str,
                 **extra) -> dict:
    """Write ``<out_uri>/model`` (the bundle in a Ray ``checkpoint``, with its final metrics),
    ``metrics.json`` and ``loss.png``; return the metrics."""
    with checkpoint.as_directory() as d:
        bundle = load_bundle(d, task=cfg.task)
    task.calibrate(bundle.model)  # the forecaster's blend with persistence, fitted on validation
    metrics = {"run": name, "history": history,
               "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
               **extra, "final": task.final_metrics(bundle.model), "config": to_dict(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "model"
        save_bundle(export, bundle.model, task=cfg.task, model_args=bundle.meta["model"]["args"],
                    metrics=metrics, config=to_dict(cfg), **task.bundle_kwargs())
        storage.upload_dir(export, storage.join(out_uri, "model"), cfg.endpoint_url)
    storage.write_bytes(storage.join(out_uri, "loss.png"), loss_curve_png(history, name, task.loss_label),
                        cfg.endpoint_url)
    storage.write_bytes(storage.join(out_uri, "metrics.json"),
                        json.dumps(metrics, indent=1, allow_nan=True).encode(), cfg.endpoint_url)
    return metrics


def _finished(out_uri: str, cfg: JobConfig, data: dict) -> dict | None:
    """The metrics of a finished run with this name, or None. A different config or different
    data under the same name (an explicit ``name=``) is an error."""
    uri = storage.join(out_uri, "metrics.json")
    if not storage.exists(uri, cfg.endpoint_url):
        return None
    metrics = json.loads(storage.read_bytes(uri, cfg.endpoint_url))
    if trained_part(to_dict(cfg)) != trained_part(metrics.get("config", {})):
        raise UserError(f"{out_uri} holds a finished run with a different config; choose another name= "
                        "or storage=")
    if metrics.get("data", {}).get("sha256") != data["sha256"]:
        describe = task_class(cfg.task).describe_data
        there = describe(metrics["data"]) if "data" in metrics else "not recorded: an older run"
        raise UserError(f"{out_uri} holds a finished run trained on other data (that run: {there}; now: "
                        f"{describe(data)}); choose another name=, or leave name unset so that new data "
                        "makes a new run")
    return metrics


def _print_summary(cfg: JobConfig, metrics: dict, out_uri: str) -> None:
    h = metrics["history"]
    resumed = f" (resumed at epoch {', '.join(map(str, metrics['resumed_at']))})" if metrics["resumed_at"] else ""
    best = min(e["val_loss"] for e in h)
    print(f"trained {len(h)} epoch(s){resumed}; best val loss {best:.4f} at epoch {metrics['best_epoch'] + 1}")
    print(task_class(cfg.task).metrics_text(metrics["final"]))
    print(f"model: {storage.join(out_uri, 'model')}\nmetrics: {storage.join(out_uri, 'metrics.json')}\n"
          f"loss curve: {storage.join(out_uri, 'loss.png')}")
