"""Hyperparameter search spaces as plain data, checked before any trial runs (no Ray here).

A search config is a job config plus two sections. ``search`` maps a config key, by its dotted
path, to one distribution; ``tune`` holds the run-level settings (``TuneSettings``):

    search:
      model.cell: {choice: [rnn, lstm, gru]}
      data.window: {grid: [10, 20]}             # every value, num_samples times each
      model.layers: {randint: [1, 3]}           # inclusive bounds
      train.lr: {loguniform: [1.0e-4, 1.0e-1]}
      model.dropout: {uniform: [0.0, 0.3]}
    tune: {num_samples: 12, scheduler: asha}

Nested sections (``model: {cell: {choice: [...]}}``) mean the same, so ``search.model.cell=...``
works as a command-line override. Every value a distribution can produce is validated against
the job config (types and limits) here, so a bad space fails before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    DATA_CONFIGS,
    JobConfig,
    TuneSettings,
    apply_overrides,
    build_section,
    job_from_dict,
    read_yaml,
    set_path,
)
from .errors import ConfigError

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
GRID_WARN_TRIALS = 100  # a search mostly made of grid points warns from this many trials
NOT_SEARCHABLE = ("task", "name", "storage", "endpoint_url")  # they name or place the run


@dataclass(frozen=True)
class Dim:
    """One searched key: ``kind`` is one of KINDS; ``args`` the options or the (low, high) bounds."""

    key: str
    kind: str
    args: tuple

    def describe(self) -> str:
        if self.kind in ("choice", "grid"):
            return f"{self.key}: {self.kind} of {list(self.args)}"
        return f"{self.key}: {self.kind} [{self.args[0]}, {self.args[1]}]"


@dataclass(frozen=True)
class Search:
    """A validated search: the base job (plain data), the searched keys and the run settings."""

    base: dict
    dims: tuple[Dim, ...]
    settings: TuneSettings
    search_raw: dict  # as written (after overrides), for the experiment name

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.args) for d in self.dims if d.kind == "grid")

    @property
    def num_trials(self) -> int:
        return self.settings.num_samples * self.grid_size

    def warnings(self) -> list[str]:
        """What a user should hear before a large search starts."""
        s, out = self.settings, []
        if self.grid_size > s.num_samples and self.num_trials >= GRID_WARN_TRIALS:
            grid = ", ".join(d.key for d in self.dims if d.kind == "grid")
            out.append(f"the grid over {grid} multiplies tune.num_samples={s.num_samples} into {self.num_trials} "
                       f"trials ({self.grid_size} grid points, each run {s.num_samples} time(s)); a grid key "
                       "costs its number of values in trials: make the keys you want explored, not "
                       "enumerated, {choice: [...]} and raise num_samples instead")
        return out

    @property
    def max_t(self) -> int:
        return self.settings.max_t or self.base_job.train.epochs

    @property
    def base_job(self) -> JobConfig:
        return job_from_dict(self.base)

    def trial_job(self, params: dict, **top_level: Any) -> JobConfig:
        """The job config of one trial: the base with the sampled ``params`` (dotted keys) set."""
        raw = copy.deepcopy(self.base)
        for key, value in params.items():
            set_path(raw, key.split("."), plain(value))
        raw.update(top_level)
        return job_from_dict(raw, "trial config")


def plain(value: Any) -> Any:
    """Samplers hand back numpy scalars; configs want Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


_SECTIONS = ("model", "data", "train", "scaling")


def _flatten(raw: dict) -> dict[str, Any]:
    """``{model: {cell: spec}, "train.lr": spec}`` -> ``{"model.cell": spec, "train.lr": spec}``."""
    out = {}
    for k, v in raw.items():
        if k in _SECTIONS and isinstance(v, dict) and v and not set(v) & set(KINDS):
            out.update({f"{k}.{inner}": spec for inner, spec in v.items()})
        else:
            out[k] = v
    return out


def _field_type(task: str, key: str) -> tuple[Any, str | None]:
    """The annotation of the config field at ``key``, or (None, why not)."""
    cls, parts = JobConfig, key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            where = ".".join(parts[:i]) or "the top level"
            return None, f"unknown key; allowed keys in {where}: {allowed}"
        tp = DATA_CONFIGS[task] if cls is JobConfig and part == "data" else hints[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                return None, "is a section; name a key inside it, e.g. model.cell"
            cls = tp
            continue
        if i != len(parts) - 1:
            return None, f"{'.'.join(parts[:i + 1])} is not a section"
        return tp, None
    return None, "empty key"


def _numeric(tp: Any) -> type | None:
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    t = inner[0]
    return t if t in (int, float) else None


def _parse_dim(task: str, key: str, spec: Any, problems: list[str]) -> Dim | None:
    where = f"search.{key}"
    if key in NOT_SEARCHABLE or key.split(".")[0] in ("scaling", "tracking"):
        problems.append(f"{where}: not searchable (it names, places, scales or tracks the run); set it outside search")
        return None
    tp, why = _field_type(task, key)
    if tp is None:
        problems.append(f"{where}: {why}")
        return None
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        problems.append(f"{where}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, got {spec!r}")
        return None
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            problems.append(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
            return None
        return Dim(key, kind, tuple(args))
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        problems.append(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
        return None
    lo, hi = args
    number = _numeric(tp)
    if number is None:
        problems.append(f"{where}: {kind} needs a numeric key; use choice for this one")
    elif kind == "randint" and (number is not int or not all(isinstance(a, int) for a in args)):
        problems.append(f"{where}: randint needs an integer key and integer bounds; use uniform for numbers")
    elif kind != "randint" and number is int:
        problems.append(f"{where}: {key} is an integer; use randint or choice")
    elif lo > hi or (kind != "randint" and lo == hi):
        problems.append(f"{where}: low {lo} must be below high {hi}")
    elif kind == "loguniform" and lo <= 0:
        problems.append(f"{where}: loguniform needs low > 0, got {lo}")
    else:
        return Dim(key, kind, (lo, hi))
    return None


def parse_search(raw: Any, base: dict, settings: TuneSettings | None, source: str) -> tuple[Dim, ...]:
    """Parse and validate the ``search`` section; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(["search: expected a mapping of config keys to distributions, e.g. "
                           "{model.cell: {choice: [lstm, gru]}}"], source)
    specs = _flatten(raw)  # a nested override (search.model.hidden=...) replaces the flat key it spells
    dims = [d for key, spec in specs.items() if (d := _parse_dim(base.get("task", "forecast"), key, spec, problems))]
    for d in dims:  # every value a trial can get must make a valid job
        values = d.args if d.kind in ("choice", "grid") else d.args[:2]
        for value in values:
            trial = copy.deepcopy(base)
            set_path(trial, d.key.split("."), value)
            try:
                job_from_dict(trial, source)
            except ConfigError as e:
                problems += [f"search.{d.key} = {value!r}: {p}" for p in e.problems]
    if settings and settings.searcher == "optuna" and any(d.kind == "grid" for d in dims):
        problems.append("search: grid is not supported with tune.searcher=optuna; use choice")
    if problems:
        raise ConfigError(problems, source)
    return tuple(dims)


def load_search(path: str | Path, overrides: list[str] = ()) -> Search:
    """Load a search YAML with ``key=value`` overrides (``tune.*``, ``search.*`` or job keys)."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping at the top level, got {raw!r}"], str(path))
    search_raw, tune_raw = raw.pop("search", None), raw.pop("tune", None)
    problems: list[str] = []
    settings = build_section(TuneSettings, tune_raw, "tune.", problems)
    if problems:
        raise ConfigError(problems, str(path))
    job = job_from_dict(raw, str(path))  # the base must be valid on its own
    dims = parse_search(search_raw, raw, settings, str(path))
    max_t = settings.max_t or job.train.epochs
    if settings.max_t > job.train.epochs:
        problems.append(f"tune.max_t: {settings.max_t} is more than train.epochs ({job.train.epochs}); "
                        "raise train.epochs or lower tune.max_t")
    if settings.scheduler == "asha" and settings.grace_period > max_t:
        problems.append(f"tune.grace_period: {settings.grace_period} is more than the {max_t} epochs a trial "
                        "may run; lower it or raise tune.max_t / train.epochs")
    if problems:
        raise ConfigError(problems, str(path))
    return Search(base=raw, dims=dims, settings=settings, search_raw=search_raw)


# ---------------------------------------------------------------------------------------------
# Results: shared by the tune job and the report

def stop_reason(epochs: int, stale: int, max_t: int, patience: int) -> str:
    """Why a finished trial stopped: ran to ``max_t``, early stopping (``patience``), or ASHA."""
    if epochs >= max_t:
        return "max_t"
    return "patience" if patience and stale >= patience else "asha"


def searched_keys(results) -> list[str]:
    """The searched config keys of a results table: its dotted columns."""
    return [c for c in results.columns if "." in c]


def short(value: Any) -> str:
    """A sampled value for a table or a log line: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def top_trials_table(results, top: int) -> str:
    """The best ``top`` trials of a results table (sorted best first) as a Markdown table."""
    from .tables import table

    keys = searched_keys(results)
    rows = [[i + 1, r["trial_id"], *[short(r[k]) for k in keys], r["epochs"], r["stopped"], r["best_val_loss"]]
            for i, r in results.head(top).iterrows()]
    return table(rows, ["#", "trial", *keys, "epochs", "stopped", "best val loss"])


def plot_keys(keys: list[str]) -> tuple[str, str | None]:
    """(x, colour) for the search plot: window size by cell type when both were searched."""
    x = "data.window" if "data.window" in keys else keys[0]
    color = "model.cell" if "model.cell" in keys and x != "model.cell" else next((k for k in keys if k != x), None)
    return x, color
