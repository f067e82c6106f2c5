"""Typed job configs: frozen dataclasses, YAML loading, dotted overrides, validation.

Every problem (unknown key, wrong type, out-of-range value) is collected and raised at once
as a ``ConfigError`` naming the key, the value and what is allowed. Field metadata holds the
help text and limits, so error messages and the config reference come from one place.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .storage import AWS_CHAIN, credentials_problem


def opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
        lo_open: bool = False, factory: bool = False, check: Callable[[str], str | None] | None = None,
        credentials: str = AWS_CHAIN) -> Any:
    """A config field with its help text and numeric limits (``lo < x`` when ``lo_open``).

    ``check(value)`` vets a string value: it returns why the value is wrong, as a phrase that
    follows the value ("is not a date; use YYYY-MM-DD"), or None. ``credentials``: where the
    credentials of a URI-valued key come from instead, for the message refusing a URI with them."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "check": check, "credentials": credentials}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _iso_date(value: str) -> str | None:
    try:
        date.fromisoformat(value)
    except ValueError:
        return "is not a date; use YYYY-MM-DD"
    return None


def _timezone(value: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a time zone; use an IANA name such as America/New_York or Europe/London"
    return None


def _location(value: str) -> str | None:
    from .storage import uri_problem  # here, not at the top: pyarrow is not needed to print help

    return uri_problem(value)


def _model_location(value: str) -> str | None:
    """A location as ``_location`` takes it, or a registry reference (models://NAME@ALIAS, models://NAME/N)."""
    from .storage import uri_problem

    return uri_problem(value, models=True)


def _segment(value: str) -> str | None:
    if value in ("", ".", "..") or "/" in value or "\\" in value or not value.isprintable():
        return "is not a single folder name; use letters, digits, '-', '_' or '.', without '/' or '..' (e.g. my-run)"
    return None


Cell = Literal["rnn", "lstm", "gru"]


@dataclass(frozen=True)
class ModelConfig:
    cell: Cell = opt("lstm", "recurrent cell type")
    hidden: int = opt(64, "hidden units per layer", lo=1)
    layers: int = opt(2, "stacked recurrent layers", lo=1, hi=8)
    dropout: float = opt(0.0, "dropout between layers and before the head", lo=0.0, hi=0.9)
    embed: int = opt(64, "character embedding size (text only)", lo=1)
    head: Literal["quantiles", "scale"] = opt(
        "quantiles", "forecast output: quantiles = one output per step and quantile; scale = a location and a "
        "positive scale per step, times learned quantile offsets shared by all windows (never cross)")


@dataclass(frozen=True)
class ForecastDataConfig:
    path: str | None = opt(None, "file, folder or s3:// prefix of OHLCV histories (CSV, .csv.gz, TSV, "
                           "Parquet; per-ticker files or long tables, Hive partitions); null = bundled sample",
                           check=_location)
    columns: dict[str, str] = opt(dict, "extra column spellings: {source_name: canonical_name}", factory=True)
    delimiter: Literal[",", ";", "\t", "|"] | None = opt(
        None, "field delimiter of .csv files; null = ',' (.tsv files are tab-separated); with another, "
        "decimal commas (1.234,56) are read")
    date_format: str | None = opt(None, "strftime spelling of dates that are not ISO 8601, e.g. %d/%m/%Y; null = "
                                  "detect (D/M/Y or M/D/Y decided per file by a day above 12)")
    target: Literal["close", "adj_close"] = opt("close", "price column to forecast")
    features: tuple[Literal["close", "open", "high", "low", "volume", "range", "gap", "volatility"], ...] = opt(
        ("close",), "input columns; the target is always included. range: the day's log(high/low); gap: "
        "log(open / the day before's close); volatility: log RMS of the target's daily log returns over the "
        "trailing year")
    transform: Literal["log_return", "window", "minmax", "standard"] = opt(
        "log_return", "how prices become model inputs and targets (see rnnlib/features.py)")
    window: int = opt(60, "input window length in trading days", lo=2)
    horizon: int = opt(5, "trading days forecast per window", lo=1)
    quantiles: tuple[float, ...] = opt(
        (0.1, 0.5, 0.9), "quantiles to predict (pinball loss); [] = point forecast with MSE")
    val_frac: float = opt(0.15, "fraction of each series (by time) for validation", lo=0.0, hi=0.5)
    test_frac: float = opt(0.15, "fraction of each series (by time) for test", lo=0.0, hi=0.5)
    end: str | None = opt(None, "train on history up to this date (YYYY-MM-DD): later rows are left out, as if "
                          "they had not arrived, so a backfill trains on what was known then; null = all",
                          check=_iso_date)
    val_start: str | None = opt(None, "validation cutoff date (YYYY-MM-DD); overrides val_frac", check=_iso_date)
    test_start: str | None = opt(None, "test cutoff date (YYYY-MM-DD); overrides test_frac", check=_iso_date)
    max_jump: float = opt(1.75, "reject a series whose close moves by more than this factor in a day "
                          "(unadjusted splits)", lo=1.0, lo_open=True)
    point_shrink: Literal["val", "off", "drift"] = opt(
        "val", "val: blend the median forecast with persistence, the weight fitted on the validation split "
        "(a forecast combination; the bands move with the median); off: the model alone; drift: the median is "
        "the last close moved by the series' median h-day return over the trailing year (a random walk with "
        "drift), the model's band around it")


@dataclass(frozen=True)
class TextDataConfig:
    path: str | None = opt(None, "UTF-8 text file, or a folder or s3:// prefix of .txt files; null = "
                           "bundled tinyshakespeare", check=_location)
    seq_len: int = opt(128, "characters per training sequence (truncated backprop length)", lo=2)
    batching: Literal["stream", "random"] = opt(
        "stream", "stream: contiguous streams with carried hidden state; random: independent windows")
    val_frac: float = opt(0.1, "fraction at the end of the corpus held out for validation", lo=0.0, hi=0.5,
                          lo_open=True)
    unknown: Literal["error", "token"] = opt(
        "error", "characters outside the vocabulary: error, or map to an unknown token")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(10, "passes over the training data", lo=1)
    lr: float = opt(3e-3, "Adam learning rate (for the effective batch)", lo=0.0, lo_open=True)
    batch_size: int = opt(64, "effective (global) batch size, split across workers", lo=1)
    weight_decay: float = opt(0.0, "AdamW weight decay", lo=0.0)
    clip: float = opt(1.0, "gradient norm clip; 0 = off", lo=0.0)
    patience: int = opt(5, "stop after this many epochs without a better val loss; 0 = off", lo=0)
    seed: int = opt(0, "random seed for init, shuffling and sampling", lo=0)
    max_batches: int = opt(0, "cap on batches per epoch; 0 = all", lo=0)
    max_failures: int = opt(2, "worker failures Ray Train recovers from (resuming from the last checkpoint)", lo=0)
    keep_checkpoints: int = opt(2, "checkpoints a training run keeps in storage, best by val_loss (a search keeps "
                                "all while it runs, then each trial's best)", lo=1)
    precision: Literal["fp32", "bf16", "fp16"] = opt(
        "fp32", "forward-pass precision: bf16 or fp16 autocast (fp16 with a gradient scaler, GPU only)")


@dataclass(frozen=True)
class ScalingConfig:
    workers: int = opt(1, "Ray Train workers", lo=1)
    gpu: bool = opt(False, "one GPU per worker (NCCL) instead of CPU (gloo)")
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker", lo=0.0, lo_open=True)


@dataclass(frozen=True)
class GateConfig:
    """The promotion gate's settings (rnnlib.gate). Tolerances are relative: the candidate passes
    a figure if it is <= the other side's * (1 + tolerance)."""

    days: int = opt(60, "trading days at the end of each series with backtest origins (every origin, "
                    "every step; keep it inside the data the candidate did not train on)", lo=1)
    rmae_tolerance: float = opt(0.0, "rMAE slack against the champion (0.01 = 1% worse still passes)", lo=0.0)
    pinball_tolerance: float = opt(0.0, "pinball-loss slack against the champion", lo=0.0)
    persistence_rmae_tolerance: float = opt(
        0.02, "rMAE slack against persistence: a week-ahead price forecast rarely beats 'tomorrow = today' by "
        "much (rMAE ~1.00)", lo=0.0)
    persistence_pinball_tolerance: float = opt(0.0, "pinball-loss slack against persistence (a band of zero "
                                               "width: easy to beat)", lo=0.0)


def _alias(value: str) -> str | None:
    return _segment(value) or ("is all digits, which reads as a version; use a word such as champion"
                               if value.isdigit() else None)


@dataclass(frozen=True)
class ReleaseConfig:
    model: str | None = opt(None, "after training, register the model under this name in the registry, gate it "
                            "against <model>@<alias> and persistence, and promote it if it passes; null = no "
                            "release (forecast models)", check=_segment)
    registry: str | None = opt(None, "registry: local folder or s3:// prefix; null = $RNNJOBS_REGISTRY",
                               check=_location)
    alias: str = opt("champion", "the alias the gate compares against and moves", check=_alias)
    histories: str | None = opt(None, "histories the gate backtests on; null = data.path (the training data)",
                                check=_location)
    gate: GateConfig = opt(GateConfig, "the gate's settings", factory=True)


def _not_empty(value: str) -> str | None:
    return "is empty; leave the key out (null) or give a value" if not value.strip() else None


MLFLOW_CREDENTIALS = ("MLflow takes them from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
                      "MLFLOW_TRACKING_TOKEN in the environment")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with MLflow (the ``rnnjobs[mlflow]`` extra): off unless ``mlflow_uri`` is set."""

    mlflow_uri: str | None = opt(None, "MLflow tracking URI: sqlite:///path/mlflow.db (a local store; artifacts "
                                 "in mlartifacts/ beside it), http(s)://HOST:PORT (a tracking server) or "
                                 "databricks; null = no tracking", check=_not_empty, credentials=MLFLOW_CREDENTIALS)
    experiment: str | None = opt(None, "MLflow experiment the runs are logged to; null = rnnjobs", check=_not_empty)


@dataclass(frozen=True)
class JobConfig:
    task: Literal["forecast", "text"] = opt("forecast", "what the model does")
    name: str | None = opt(None, "run name; null = derived from the config (deterministic)", check=_segment)
    storage: str = opt("outputs/runs", "local folder or s3://bucket/prefix for checkpoints and models",
                       check=_location)
    endpoint_url: str | None = opt(None, "S3-compatible endpoint; null = AWS_ENDPOINT_URL_S3 or AWS")
    model: ModelConfig = opt(ModelConfig, "model section", factory=True)
    data: ForecastDataConfig | TextDataConfig = opt(ForecastDataConfig, "data section", factory=True)
    train: TrainConfig = opt(TrainConfig, "training section", factory=True)
    scaling: ScalingConfig = opt(ScalingConfig, "Ray Train scaling section", factory=True)
    release: ReleaseConfig = opt(ReleaseConfig, "register, gate and promote the trained model", factory=True)
    tracking: TrackingConfig = opt(TrackingConfig, "log the run to MLflow", factory=True)


DATA_CONFIGS = {"forecast": ForecastDataConfig, "text": TextDataConfig}


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune`` section of a search config: how many trials, how they run, when they stop."""

    name: str | None = opt(None, "experiment name; null = derived from the config and search space "
                           "(deterministic, so rerunning resumes)", check=_segment)
    num_samples: int = opt(12, "trials to sample; with grid keys, samples per grid point", lo=1)
    max_concurrent_trials: int = opt(0, "trials running at once; 0 = as many as the resources allow", lo=0)
    searcher: Literal["random", "optuna"] = opt("random", "random: independent samples; optuna: TPE "
                                                "(model-based; needs the optuna extra; no grid keys)")
    scheduler: Literal["asha", "fifo"] = opt("asha", "asha: stop poor trials early; fifo: run every trial "
                                             "to max_t")
    max_t: int = opt(0, "epochs a trial may run; 0 = train.epochs", lo=0)
    grace_period: int = opt(1, "ASHA: epochs every trial runs before it may be stopped", lo=1)
    reduction_factor: float = opt(2.0, "ASHA: keep the best 1/reduction_factor at each rung", lo=1.0,
                                  lo_open=True)
    seed: int = opt(0, "seed of the searcher (the same seed samples the same configs)", lo=0)
    trial: Literal["process", "trainer"] = opt(
        "process", "process: each trial trains in one Ray actor (small RNNs); trainer: each trial runs a "
        "TorchTrainer with scaling.workers workers (large models)")
    cpus_per_trial: float = opt(1.0, "CPUs per process trial (fractions allowed)", lo=0.0, lo_open=True)
    gpus_per_trial: float = opt(0.0, "GPUs per process trial (fractions share a GPU)", lo=0.0)
    top: int = opt(5, "trials shown in the final table", lo=1)


@dataclass(frozen=True)
class GenerateConfig:
    model: str | None = opt(None, "text bundle: local folder or s3:// URI (the model/ folder train exports), "
                            "or models://NAME@ALIAS / models://NAME/VERSION from the registry ($RNNJOBS_REGISTRY)",
                            check=_model_location)
    prompt: str = opt("", "text to continue; empty starts from a newline")
    length: int = opt(500, "characters to generate per sample", lo=1)
    temperature: float = opt(0.8, "sampling temperature; 0 = greedy (argmax)", lo=0.0)
    top_k: int = opt(0, "sample only from the k most likely characters; 0 = off", lo=0)
    top_p: float = opt(1.0, "nucleus sampling: the smallest set with this probability; 1 = off",
                       lo=0.0, hi=1.0, lo_open=True)
    seed: int = opt(0, "random seed; the same seed gives the same text", lo=0)
    samples: int = opt(1, "samples generated together as one batch", lo=1)
    out: str | None = opt(None, "also write the samples to this file or s3:// URI", check=_location)
    drop_unknown: bool = opt(False, "drop prompt characters the vocabulary lacks (with a warning) "
                             "instead of failing")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where the model runs; auto = the GPU when one is visible")
    endpoint_url: str | None = opt(None, "S3-compatible endpoint; null = AWS_ENDPOINT_URL_S3 or AWS")


# ---------------------------------------------------------------------------------------------
# Parsing

def _fmt(value: Any) -> str:
    """A value as YAML, short enough for one line of an error message."""
    if isinstance(value, (list, tuple)) and len(value) > 5:
        return f"{_fmt(list(value[:5]))} ... ({len(value)} items)"
    if isinstance(value, dict) and len(value) > 5:
        return f"{_fmt(dict(list(value.items())[:5]))} ... ({len(value)} keys)"
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...")  # the end-of-document marker YAML puts after a scalar
    return text if len(text) <= 100 else text[:97] + "..."


YAML_BOOL_WORDS = {False: "off", True: "on"}


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted, or append a problem."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if isinstance(value, bool) and YAML_BOOL_WORDS[value] in args:  # `off` unquoted: YAML 1.1 reads false
            value = YAML_BOOL_WORDS[value]
        if value not in args:
            problems.append(f"{key}: {_fmt(value)} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {_fmt(value)}")
            return value
        return tuple(_convert(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            problems.append(f"{key}: expected a mapping of names to names, got {_fmt(value)}")
        return dict(value) if isinstance(value, dict) else value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {_fmt(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {_fmt(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {_fmt(value)}")
            return value
        if not math.isfinite(value):  # NaN passes every range check; inf is no setting
            problems.append(f"{key}: expected a finite number, got {_fmt(value)}")
            return value
        return float(value)
    if tp is str:
        if isinstance(value, date):  # YAML reads an unquoted 2017-02-10 as a date
            return value.isoformat()
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {_fmt(value)}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _check_range(f: dataclasses.Field, value: Any, key: str, problems: list[str]) -> None:
    lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if lo is not None and (value <= lo if lo_open else value < lo):
        problems.append(f"{key}: {value} is out of range; must be {'>' if lo_open else '>='} {lo}"
                        + (f" and <= {hi}" if hi is not None else ""))
    elif hi is not None and value > hi:
        problems.append(f"{key}: {value} is out of range; must be <= {hi}")


def build_section(cls: type, raw: Any, prefix: str, problems: list[str], hints: dict | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping, collecting problems instead of stopping.

    None when a value has the wrong type (in this section or one inside it): checks across
    fields need every value typed. A value of the right type but out of range still builds."""
    hints = hints or typing.get_type_hints(cls)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping of keys, got {_fmt(raw)}")
        raw = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key; allowed keys{' in ' + prefix[:-1] if prefix else ''}: "
                            f"{', '.join(fields)}")
    values, typed = {}, True
    for name, f in fields.items():
        if name not in raw:
            continue
        key = prefix + name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = build_section(tp, raw[name], key + ".", problems)
            typed = typed and values[name] is not None
            continue
        before = len(problems)
        values[name] = value = _convert(tp, raw[name], key, problems)
        if len(problems) > before:
            typed = False
            continue
        _check_range(f, value, key, problems)
        # any URI-valued key, in every config
        if problem := credentials_problem(key, value, f.metadata.get("credentials", AWS_CHAIN)):
            problems.append(problem)
            continue
        check = f.metadata.get("check")
        why = check(value) if check and isinstance(value, str) else None
        if why:
            problems.append(f"{key}: {_fmt(value)} {why}")
    return cls(**values) if typed else None


def _check_job(cfg: JobConfig, problems: list[str]) -> None:
    d = cfg.data
    if isinstance(d, ForecastDataConfig):
        if d.quantiles:
            if any(not 0 < q < 1 for q in d.quantiles) or list(d.quantiles) != sorted(set(d.quantiles)):
                problems.append(f"data.quantiles: {list(d.quantiles)} must be increasing, distinct and in (0, 1)")
            elif 0.5 not in d.quantiles:
                problems.append(f"data.quantiles: {list(d.quantiles)} must include 0.5 (the point forecast)")
        if d.point_shrink == "drift" and len(d.quantiles) < 3:
            problems.append(f"data.point_shrink: drift keeps the model's band around a random walk with drift, but "
                            f"data.quantiles {list(d.quantiles)} has no band; give 3 or more, or use val or off")
        if cfg.model.head == "scale" and len(d.quantiles) < 2:
            problems.append(f"model.head: scale spreads quantiles around a location, but data.quantiles is "
                            f"{list(d.quantiles)}; give 2 or more, or use model.head: quantiles")
        if d.val_frac + d.test_frac >= 0.9:
            problems.append(f"data.val_frac + data.test_frac = {d.val_frac + d.test_frac:g} leaves too "
                            "little for training; keep the sum below 0.9")
        if d.val_start and d.test_start and d.val_start >= d.test_start:
            problems.append(f"data.val_start ({d.val_start}) must be before data.test_start ({d.test_start})")
    elif cfg.release.model:
        problems.append(f"release.model: {cfg.release.model!r}: the release gate backtests forecasts; for a "
                        "text model register and promote it with `rnnjobs models` (or leave release.model null)")


def job_from_dict(raw: Any, source: str = "config") -> JobConfig:
    """Validate a raw mapping into a ``JobConfig``; raise ``ConfigError`` listing every problem."""
    problems: list[str] = []
    raw = dict(raw or {}) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping at the top level, got {_fmt(raw)}"], source)
    task = raw.get("task", "forecast")
    if not isinstance(task, str) or task not in DATA_CONFIGS:
        problems.append(f"task: {_fmt(task)} is not allowed; choose one of {', '.join(DATA_CONFIGS)}")
        task = "forecast"
    raw["task"] = task
    data_raw = raw.pop("data", None)
    hints = typing.get_type_hints(JobConfig)
    cfg = build_section(JobConfig, raw, "", problems, hints)
    data = build_section(DATA_CONFIGS[task], data_raw, "data.", problems)
    if cfg is not None and data is not None:
        cfg = dataclasses.replace(cfg, data=data)
        _check_job(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


@dataclass(frozen=True)
class ScoreConfig:
    input: str | None = opt(None, "file, folder or s3:// prefix of histories (CSV, .csv.gz, TSV, Parquet; "
                            "per-ticker files or long tables, Hive partitions); null = bundled sample",
                            check=_location)
    input_layout: Literal["auto", "per_ticker", "long"] = opt(
        "auto", "per_ticker: each ticker's rows are in one file (batches of files are scored as they are); "
        "long: a ticker's rows may span files (rows are grouped by ticker with a Ray Data hash shuffle); "
        "auto: long when files sit in key=value folders or their names hold a date, else per_ticker")
    model: str | None = opt(None, "forecast bundle: local folder or s3:// URI (<storage>/<run>/model), or "
                            "models://NAME@ALIAS / models://NAME/VERSION from the registry ($RNNJOBS_REGISTRY)",
                            check=_model_location)
    output: str = opt("outputs/forecasts", "local folder or s3:// prefix; each run publishes under run=<id>/",
                      check=_location)
    mode: Literal["forecast", "backtest"] = opt("forecast", "forecast: the next horizon days after the last "
                                                "row (or as_of); backtest: rolling forecasts over past data")
    as_of: str | None = opt(None, "YYYY-MM-DD, or today (the date in exchange_tz when the job starts); rows after "
                            "it are ignored; null = each series' last row (the run is filed under today)",
                            check=lambda v: None if v == "today" else _iso_date(v))
    exchange_tz: str = opt("America/New_York", "the exchange's time zone: what 'today' is (an evening run "
                           "after midnight UTC still forecasts as of the exchange's date)", check=_timezone)
    backtest_days: int = opt(250, "backtest: trading days at the end of each series with rolling origins", lo=1)
    step: int | None = opt(None, "backtest: days between origins; null = the model's horizon", lo=1)
    columns: dict[str, str] = opt(dict, "extra column spellings: {source_name: canonical_name}", factory=True)
    delimiter: Literal[",", ";", "\t", "|"] | None = opt(None, "as data.delimiter of a forecast config")
    date_format: str | None = opt(None, "as data.date_format of a forecast config")
    files_per_batch: int = opt(16, "history files each scoring call loads and scores together (per-ticker "
                                   "layout) or each read task reads (long layout)", lo=1)
    batch_size: int = opt(512, "windows per forward pass (a few hundred is fastest on CPU)", lo=1)
    actors: int = opt(2, "scoring actors (each loads the model once); the long layout on CPUs: scoring "
                         "tasks at a time, in the read tasks' processes", lo=1)
    cpus_per_actor: float = opt(1.0, "CPUs per scoring actor (or long-layout scoring task)", lo=0.0, lo_open=True)
    gpu: bool = opt(False, "one GPU per scoring actor")
    endpoint_url: str | None = opt(None, "S3-compatible endpoint; null = AWS_ENDPOINT_URL_S3 or AWS")
    tracking: TrackingConfig = opt(TrackingConfig, "log each published run to MLflow", factory=True)


def section_from_dict(cls: type, raw: Any, source: str = "config") -> Any:
    """Validate a flat config (such as ``GenerateConfig``) from a mapping, all problems at once."""
    problems: list[str] = []
    cfg = build_section(cls, raw, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _impossible_dates(node: yaml.Node, path: tuple = ()) -> list[tuple[str, str]]:
    """``(key, text)`` of every scalar that YAML reads as a date but is none (2017-02-30), found in
    the composed node tree (no object is built), so the error can name its key."""
    if isinstance(node, yaml.MappingNode):
        return [bad for k, v in node.value for bad in _impossible_dates(v, (*path, str(k.value)))]
    if isinstance(node, yaml.SequenceNode):
        return [bad for i, v in enumerate(node.value) for bad in _impossible_dates(v, (*path, str(i)))]
    if node.tag == "tag:yaml.org,2002:timestamp":
        try:
            yaml.safe_load(node.value)
        except ValueError:
            return [(".".join(path), node.value)]
    return []


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``["model.cell=gru", "train.epochs=2"]`` -> ``[(["model", "cell"], "gru"), ...]``."""
    out, problems = [], []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected key=value with a dotted key, e.g. model.cell=gru")
            continue
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except (yaml.YAMLError, ValueError):  # e.g. !!float abc, or 2017-13-45: validation names the key
            value = text
        out.append((key.split("."), value))
    if problems:
        raise ConfigError(problems, "command line")
    return out


def set_path(raw: dict, path: list[str], value: Any) -> None:
    """``raw[path[0]][path[1]]... = value``, creating sections on the way."""
    node = raw
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides applied (values parsed as YAML)."""
    raw = copy.deepcopy(raw or {})
    for path, value in parse_overrides(overrides):
        set_path(raw, path, value)
    return raw


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with ``yaml.safe_load``; a missing or malformed file is a ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"file not found: {p} (pass the path to a YAML config; the shipped ones "
                           "are in jobs/configs/)"], str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text ({e.reason} at byte {e.start})"], str(p)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(p)) from None
    except ValueError as e:  # a date that is none (2017-02-30), or a tagged scalar such as !!float abc
        dates = _impossible_dates(yaml.compose(text))
        raise ConfigError([f"{key}: {value!r} is not a date; use YYYY-MM-DD" for key, value in dates]
                          or [f"not valid YAML: {e}"], str(p)) from None


def load_job(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    """Load a job YAML, apply ``key=value`` overrides, validate."""
    return job_from_dict(apply_overrides(read_yaml(path), list(overrides)), str(path))


def to_dict(cfg: Any) -> dict:
    """A config as plain data (lists instead of tuples), suitable for YAML or JSON."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# Reference: every key with its default and help text, from the classes above

def _limits(f: dataclasses.Field) -> str:
    lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
    parts = [f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []
    parts += [f"<= {hi:g}"] if hi is not None else []
    return f" [{', '.join(parts)}]" if parts else ""


def describe(cls: type, overrides: dict | None = None, indent: str = "") -> str:
    """YAML of ``cls``'s defaults with each key's help (and limits or choices) as a comment.

    ``overrides`` replaces a section's class, e.g. ``{"data": TextDataConfig}``."""
    hints, lines = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = (overrides or {}).get(f.name, hints[f.name])
        if dataclasses.is_dataclass(tp):
            lines.append(f"{(indent + f.name + ':'):<37} # {f.metadata.get('help', '')}")
            lines.append(describe(tp, None, indent + "  "))
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        value = yaml.safe_dump(_plain(default), default_flow_style=True).strip()
        value = value[:-4].strip() if value.endswith("\n...") else value.removesuffix("...").strip()
        choices = [str(a) for a in typing.get_args(tp)] if typing.get_origin(tp) is Literal else []
        note = f" (one of: {', '.join(choices)})" if choices else _limits(f)
        lines.append(f"{(indent + f.name + ': ' + value):<37} # {f.metadata.get('help', '')}{note}")
    return "\n".join(lines)


def reference(job: str) -> str:
    """The commented defaults of a job's config: train-forecast, train-text, tune, score, generate."""
    if job in ("train-forecast", "train-text"):
        task = job.split("-")[1]
        return f"{'task: ' + task:<38}# what the model does (one of: forecast, text)\n" + "\n".join(
            line for line in describe(JobConfig, {"data": DATA_CONFIGS[task]}).splitlines()
            if not line.startswith("task:"))
    if job == "tune":
        return ("# a train config (rnnjobs config show train-forecast) plus:\n" + f"{'search:':<38}"
                "# dotted key -> {choice|grid: [...]} or "
                "{uniform|loguniform|randint: [low, high]}\n  model.cell: {choice: [rnn, lstm, gru]}\n"
                f"{'tune:':<38}# run-level settings\n" + describe(TuneSettings, None, "  "))
    return describe({"score": ScoreConfig, "generate": GenerateConfig}[job])


REFERENCE_JOBS = ("train-forecast", "train-text", "tune", "score", "generate")
