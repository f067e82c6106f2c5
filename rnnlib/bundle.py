"""The model bundle, saved and loaded in this one place.

A bundle is a folder with ``weights.pt`` (a state dict, loaded with ``weights_only=True``)
and ``bundle.json``: task, model class and constructor args, data args, the vocabulary or
the per-series transforms (``rnnlib.features.SeriesTransform``; stored under the key ``scalers``,
the name bundles have always used), metrics, versions, the sha256 of ``weights.pt``, and
``meta_sha256``, a checksum of bundle.json's own content (see ``meta_digest``).

Loading trusts nothing it reads: bundle.json must match its checksum, then its keys, types and
bounds are checked, and the weights' names and shapes are compared with what the model args
need (computed on the meta device, which allocates nothing), all before the model is built.
Every failure is a ``BundleError`` naming what does not match. Bundles written before
``meta_sha256`` existed have none; they load as before, with every other check.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import platform
import re
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .errors import BundleError
from .features import CENTRES, TRANSFORMS, SeriesTransform
from .jsoncheck import KINDS, Problems, an, json_type, show
from .models import CELLS, HEADS, CharLM, Forecaster
from .text import Vocab

FORMAT = "rnnjobs-bundle/1"
MODELS = {"text": CharLM, "forecast": Forecaster}
WEIGHTS, META = "weights.pt", "bundle.json"
MAX_META_BYTES = 256 << 20  # a vocabulary of every code point and scalers for 100k series fit in far less

# Model args: (JSON type, lowest, highest[, choices]). Generous, far past any model we train, so a
# nonsense value (hidden: 2000000) is named before anything is computed from it; the weights'
# shapes are checked against the args too, before the model is built.
ARG_RULES = {
    "vocab_size": ("integer", 1, 0x110000),  # Unicode has 0x110000 code points
    "embed": ("integer", 1, 1 << 16),
    "hidden": ("integer", 1, 1 << 16),
    "layers": ("integer", 1, 64),
    "n_features": ("integer", 1, 1 << 12),
    "horizon": ("integer", 1, 1 << 12),
    "n_outputs": ("integer", 1, 1 << 8),
    "dropout": ("number", 0.0, 1.0),
    "cell": ("string", None, None, CELLS),
    "head": ("string", None, None, HEADS),
}


def versions() -> dict:
    """Library versions, read from package metadata (importing Ray here would be wrong)."""
    out = {"python": platform.python_version()}
    for dist in ("rnnjobs", "torch", "ray", "numpy", "pandas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: the model (on CPU, eval mode) and its metadata."""

    path: Path
    model: nn.Module
    meta: dict
    registry: dict | None = None  # opened by a models:// reference: its version.json, "ref" and "uri" (resolved)

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def data(self) -> dict:
        return self.meta["data"]

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_dict(self.meta["vocab"])

    @property
    def transforms(self) -> dict[str, SeriesTransform]:
        return {t: SeriesTransform.from_dict(d) for t, d in self.meta.get("scalers", {}).items()}


def save_bundle(path: str | Path, model: nn.Module, *, task: str, model_args: dict, data: dict,
                vocab: Vocab | None = None, transforms: dict[str, SeriesTransform] | None = None,
                metrics: dict | None = None, config: dict | None = None) -> Path:
    """Write a bundle folder. The JSON is written last, so a half-written bundle does not load."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    _atomic_write(path / WEIGHTS, lambda f: torch.save(state, f))
    meta = {
        "format": FORMAT, "task": task,
        "model": {"class": MODELS[task].__name__, "args": model_args},
        "data": data,
        "vocab": vocab.to_dict() if vocab is not None else None,
        "scalers": {t: s.to_dict() for t, s in (transforms or {}).items()},
        "metrics": metrics or {}, "config": config or {},
        "versions": versions(),
        "weights_sha256": sha256_file(path / WEIGHTS),
    }
    meta["meta_sha256"] = meta_digest(json.loads(json.dumps(meta, allow_nan=True)))  # of what a reader parses
    text = json.dumps(meta, indent=1, ensure_ascii=False, allow_nan=True)
    _atomic_write(path / META, lambda f: f.write(text.encode("utf-8")))
    return path


def meta_digest(meta: dict) -> str:
    """sha256 of bundle.json's content without its ``meta_sha256``: keys sorted, compact, ASCII.
    Re-indenting the file keeps it; changing, adding or removing any value does not."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wraps the model in .module


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(path: str | Path) -> dict:
    """bundle.json as a dict: present, of a sane size, a JSON object, our format, and (when it has
    one) matching its checksum. Its keys and types are checked by ``validate_meta``."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {META}); point to the model/ folder "
                          "that rnnjobs train exported")
    size = meta_path.stat().st_size
    if size > MAX_META_BYTES:
        raise BundleError(f"{meta_path}: {size:,} bytes, more than any bundle's metadata "
                          f"({MAX_META_BYTES >> 20} MiB at most): not a bundle.json; re-export the bundle")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{meta_path}: not valid JSON ({e}); the bundle is damaged, re-export it") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: {an(json_type(meta))}, expected an object (format, task, model, "
                          "data, ...); the bundle is damaged, re-export it")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format {show(meta.get('format'))}, expected {FORMAT!r}")
    declared = meta.get("meta_sha256")  # absent: written before the checksum; loaded with the other checks
    try:
        sealed = declared is None or declared == meta_digest(meta)
    except RecursionError:  # nested deeper than any bundle.json
        sealed = False
    if not sealed:
        raise BundleError(f"{meta_path}: the content does not match its checksum (meta_sha256): bundle.json "
                          "was edited or damaged after it was written; restore it or re-export the bundle")
    return meta


def open_bundle(uri: str, task: str | None = None, endpoint_url: str | None = None) -> Bundle:
    """Load a bundle from a local folder, an s3:// URI (downloaded to a temporary folder) or a
    registry reference ``models://NAME@ALIAS`` / ``models://NAME/VERSION`` (resolved against
    ``$RNNJOBS_REGISTRY``; see rnnlib.registry)."""
    from . import storage

    if str(uri).startswith("models://"):
        from .registry import resolve

        concrete, info = resolve(str(uri), endpoint_url)
        bundle = open_bundle(concrete, task, endpoint_url)
        if bundle.meta["weights_sha256"] != info.get("weights_sha256"):
            raise BundleError(f"{uri} ({storage.redact(concrete)}): the weights' sha256 differs from the one "
                              "registered in version.json: the registry's copy was replaced or damaged")
        bundle.registry = {**info, "uri": concrete}
        return bundle
    if not storage.is_s3(uri):
        return load_bundle(uri, task)
    with tempfile.TemporaryDirectory(prefix="rnnjobs-bundle-") as tmp:  # the model and meta are read into memory
        local = storage.download_dir(uri, tmp, endpoint_url)
        try:
            return load_bundle(local, task)
        except BundleError as e:  # name the object, not the temporary folder
            raise BundleError(str(e).replace(str(local), storage.redact(str(uri)).rstrip("/"))) from None


def load_bundle(path: str | Path, task: str | None = None) -> Bundle:
    """Load a bundle; ``task`` (if given) must match. Every mismatch is a ``BundleError``, raised
    before the model is built (so before any allocation the bundle's numbers ask for)."""
    path = Path(path)
    meta = read_meta(path)
    if task is not None and isinstance(meta.get("task"), str) and meta["task"] in MODELS and meta["task"] != task:
        raise BundleError(f"{path}: this is a {meta['task']} model; this job needs a {task} model")
    problems = validate_meta(meta)
    if problems:
        raise BundleError(f"{path / META}: not a bundle rnnjobs can load; {len(problems)} problem(s):\n"
                          + "\n".join(f"  - {p}" for p in problems) + "\nre-export the bundle")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{path}: {WEIGHTS} is missing; the bundle is incomplete, re-export it")
    digest = sha256_file(weights)
    if digest != meta["weights_sha256"]:
        raise BundleError(f"{weights}: sha256 {digest[:12]}... does not match bundle.json "
                          f"({meta['weights_sha256'][:12]}...): the weights were modified or "
                          "belong to another bundle")
    cls, args = MODELS[meta["task"]], meta["model"]["args"]
    what = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    try:
        with torch.device("meta"):  # names and shapes only: nothing is allocated
            expected = {k: v.shape for k, v in cls(**args).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: model args {args} do not fit {cls.__name__}: {e}") from None
    state = _read_weights(weights)
    mismatch = _state_mismatch(state, expected)
    if mismatch:
        raise BundleError(f"{path}: the weights do not fit {what}: " + "; ".join(mismatch[:6])
                          + (f"; and {len(mismatch) - 6} more" if len(mismatch) > 6 else ""))
    model = cls(**args)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).split("\n", 1)[-1].strip()
        raise BundleError(f"{path}: the weights do not fit {what}: {detail[:500]}") from None
    return Bundle(path, model.eval(), meta)


def _read_weights(weights: Path) -> dict:
    """The object in weights.pt, refused unless it is what ``torch.save`` writes: a zip archive of
    stored (uncompressed) records, so nothing in it unpacks past the file's own size, holding a
    pickle of tensors and plain containers only (``weights_only=True``: nothing in it is run)."""
    not_ours = f"{weights}: not a bundle's weights"
    fix = "re-export the bundle (rnnjobs train writes it)"
    size = weights.stat().st_size
    try:
        with zipfile.ZipFile(weights) as z:
            records = z.infolist()
    except Exception as e:  # BadZipFile, or anything a crafted archive raises
        raise BundleError(f"{not_ours}: not a PyTorch zip archive ({_first_line(e)}): truncated, damaged "
                          f"or another kind of file; {fix}") from None
    if any(r.compress_type != zipfile.ZIP_STORED for r in records) or sum(r.file_size for r in records) > size:
        raise BundleError(f"{not_ours}: its records are compressed or larger than the file, which "
                          f"torch.save never writes: {fix}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: never for a bundle
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise BundleError(f"{not_ours}: it holds Python objects other than tensors"
                          + (f" ({found.group(1)})" if found else "") + ", refused without running them. "
                          f"Do not load this file by other means; {fix}") from None
    except Exception as e:
        line = _first_line(e)
        raise BundleError(f"{not_ours}: it cannot be read as a state dict"
                          + (f" ({line})" if "weights_only" not in line else "")
                          + f"; the file is damaged: {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              and v.is_floating_point() for k, v in state.items()):
        what = "a dict with other values" if isinstance(state, dict) else an(type(state).__name__)
        raise BundleError(f"{not_ours}: it holds {what}, not a state dict (parameter name -> "
                          f"floating-point tensor); {fix}")
    return state


def _state_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> list[str]:
    """How a state dict differs from the parameter names and shapes the model args need."""
    out = [f"size mismatch for {k}: weights {list(state[k].shape)}, the args need {list(shape)}"
           for k, shape in expected.items() if k in state and state[k].shape != shape]
    out += [f"missing {k}" for k in expected if k not in state]
    return out + [f"unexpected {k}" for k in state if k not in expected]


def validate_meta(meta: dict) -> list[str]:
    """Every way ``meta`` (a parsed bundle.json) differs from what ``save_bundle`` writes: missing
    keys, wrong types, values out of bounds, and data args that disagree with the model args."""
    p = Problems()
    task = p.take(meta, "task", "string", choices=tuple(MODELS))
    args = None
    model = p.take(meta, "model", "object")
    if model is not None:
        name = p.take(model, "class", "string", "model.class")
        if task and name is not None and name != MODELS[task].__name__:
            p.append(f"model.class: {name!r}, but a {task} bundle holds a {MODELS[task].__name__}")
        args = p.take(model, "args", "object", "model.args")
        if task and args is not None:
            args = _check_args(MODELS[task], args, p)
    data = p.take(meta, "data", "object")
    if task == "forecast":
        if data is not None:
            _check_forecast_data(data, args, p)
        if meta.get("vocab") is not None:
            p.append(f"vocab: {show(meta['vocab'])}, expected null (a forecast model has no vocabulary)")
    elif task == "text":
        if data is not None:
            p.take(data, "seq_len", "integer", "data.seq_len", required=False, lo=1, hi=1 << 24)
            p.take(data, "val_frac", "number", "data.val_frac", required=False, lo=0.0, hi=1.0)
        _check_vocab(p.take(meta, "vocab", "object"), args, p)
    scalers = p.take(meta, "scalers", "object", required=False)
    if scalers:
        _check_scalers(scalers, p)
    for key in ("metrics", "config", "versions"):
        p.take(meta, key, "object", required=False)
    p.take(meta, "weights_sha256", "sha256")
    p.take(meta, "meta_sha256", "sha256", required=False)
    return list(p)


def _check_args(cls: type, args: dict, p: Problems) -> dict | None:
    """``args`` if they are exactly ``cls``'s arguments, typed and in bounds, else None."""
    params = inspect.signature(cls).parameters
    before = len(p)
    for name in args:
        if name not in params:
            p.append(f"model.args.{name}: not an argument of {cls.__name__} (it takes {', '.join(params)})")
    for name, param in params.items():
        kind, lo, hi, *choices = ARG_RULES[name]
        p.take(args, name, kind, f"model.args.{name}", required=param.default is inspect.Parameter.empty,
               lo=lo, hi=hi, choices=choices[0] if choices else None)
    return args if len(p) == before else None


def _check_forecast_data(data: dict, args: dict | None, p: Problems) -> None:
    p.take(data, "window", "integer", "data.window", lo=2, hi=1 << 20)
    horizon = p.take(data, "horizon", "integer", "data.horizon", lo=1, hi=ARG_RULES["horizon"][2])
    if horizon is not None and args and horizon != args["horizon"]:
        p.append(f"data.horizon: {horizon}, but the model forecasts {args['horizon']} steps (model.args.horizon)")
    cols = p.take(data, "columns", "array", "data.columns")
    if cols is not None:
        if not cols or not all(isinstance(c, str) for c in cols) or len(set(cols)) != len(cols):
            p.append(f"data.columns: {show(cols)}, expected a non-empty list of distinct column names")
            cols = None
        elif args and len(cols) != args["n_features"]:
            p.append(f"data.columns: {len(cols)} column(s), but the model takes {args['n_features']} "
                     "feature(s) (model.args.n_features)")
    target = p.take(data, "target", "string", "data.target")
    if target is not None and cols and target != cols[0]:
        p.append(f"data.target: {target!r} must be the first of data.columns {cols}")
    p.take(data, "transform", "string", "data.transform", choices=TRANSFORMS)
    q = p.take(data, "quantiles", "array", "data.quantiles")
    if q is not None:
        numbers = all(KINDS["number"](x) for x in q)
        if not numbers or any(not 0 < x < 1 for x in q) or q != sorted(set(q)):
            p.append(f"data.quantiles: {show(q)}, expected increasing, distinct numbers in (0, 1)")
        elif q and 0.5 not in q:
            p.append(f"data.quantiles: {q} must include 0.5 (the point forecast)")
        elif args and max(1, len(q)) != args["n_outputs"]:
            p.append(f"data.quantiles: {len(q)} quantile(s), but the model outputs {args['n_outputs']} "
                     "per step (model.args.n_outputs)")
    p.take(data, "max_jump", "number", "data.max_jump", required=False, lo=1.0)
    p.take(data, "point_weight", "number", "data.point_weight", required=False, lo=0.0, hi=1.0)
    p.take(data, "point_centre", "string", "data.point_centre", required=False, choices=CENTRES)


def _check_vocab(vocab: dict | None, args: dict | None, p: Problems) -> None:
    if vocab is None:
        return
    chars = p.take(vocab, "chars", "string", "vocab.chars")
    unknown = p.take(vocab, "unknown", "string", "vocab.unknown", choices=("error", "token"))
    if chars is None or unknown is None:
        return
    if len(set(chars)) != len(chars):
        p.append(f"vocab.chars: {len(chars) - len(set(chars))} character(s) appear more than once")
    elif args and len(Vocab(list(chars), unknown)) != args["vocab_size"]:
        p.append(f"vocab: {len(Vocab(list(chars), unknown))} characters, but the model expects "
                 f"{args['vocab_size']} (model.args.vocab_size)")


def _check_scalers(scalers: dict, p: Problems) -> None:
    bad = []
    for ticker, s in scalers.items():
        q = Problems()
        where = f"scalers.{ticker}"
        if not isinstance(s, dict):
            q.append(f"{where}: {an(json_type(s))}, expected an object")
        else:
            q.take(s, "kind", "string", f"{where}.kind", choices=TRANSFORMS)
            cols = q.take(s, "columns", "array", f"{where}.columns")
            for key in ("loc", "scale"):
                v = q.take(s, key, "array", f"{where}.{key}")
                if v is not None and not all(KINDS["number"](x) for x in v):
                    q.append(f"{where}.{key}: {show(v)}, expected a list of numbers")
                elif v is not None and cols is not None and len(v) != len(cols):
                    q.append(f"{where}.{key}: {len(v)} value(s) for {len(cols)} column(s)")
        bad += q
    p += bad[:5]
    if len(bad) > 5:
        p.append(f"scalers: {len(bad) - 5} more problem(s) like these")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
