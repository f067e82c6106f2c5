"""The model bundle, saved and loaded in this one place.

A bundle is a folder with ``weights.pt`` (a state dict, loaded with ``weights_only=True``)
and ``bundle.json``: task, model class and constructor args, data args, the vocabulary or
the per-series scaler parameters, metrics, versions, and the sha256 of ``weights.pt``, so a
swapped or truncated weights file is caught before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .errors import BundleError
from .features import SeriesTransform
from .models import CharLM, Forecaster
from .text import Vocab

FORMAT = "rnnjobs-bundle/1"
MODELS = {"text": CharLM, "forecast": Forecaster}
WEIGHTS, META = "weights.pt", "bundle.json"


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
                vocab: Vocab | None = None, scalers: dict[str, SeriesTransform] | None = None,
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
        "scalers": {t: s.to_dict() for t, s in (scalers or {}).items()},
        "metrics": metrics or {}, "config": config or {},
        "versions": versions(),
        "weights_sha256": sha256_file(path / WEIGHTS),
    }
    text = json.dumps(meta, indent=1, ensure_ascii=False, allow_nan=True)
    _atomic_write(path / META, lambda f: f.write(text.encode("utf-8")))
    return path


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
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {META}); point to the model/ folder "
                          "that rnnjobs train exported")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_path}: not valid JSON ({e}); the bundle is damaged, re-export it") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def open_bundle(uri: str, task: str | None = None, endpoint_url: str | None = None) -> Bundle:
    """Load a bundle from a local folder or an s3:// URI (downloaded to a temporary folder)."""
    from . import storage

    if not storage.is_s3(uri):
        return load_bundle(uri, task)
    local = storage.download_dir(uri, tempfile.mkdtemp(prefix="rnnjobs-bundle-"), endpoint_url)
    return load_bundle(local, task)


def load_bundle(path: str | Path, task: str | None = None) -> Bundle:
    """Load a bundle; ``task`` (if given) must match. Every mismatch is a ``BundleError``."""
    path = Path(path)
    meta = read_meta(path)
    if task is not None and meta["task"] != task:
        raise BundleError(f"{path}: this is a {meta['task']} model; this job needs a {task} model")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{path}: {WEIGHTS} is missing; the bundle is incomplete, re-export it")
    digest = sha256_file(weights)
    if digest != meta.get("weights_sha256"):
        raise BundleError(f"{weights}: sha256 {digest[:12]}... does not match bundle.json "
                          f"({str(meta.get('weights_sha256'))[:12]}...): the weights were modified or "
                          "belong to another bundle")
    cls = MODELS[meta["task"]]
    try:
        model = cls(**meta["model"]["args"])
    except TypeError as e:
        raise BundleError(f"{path}: model args {meta['model']['args']} do not fit {cls.__name__}: {e}") from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).split("\n", 1)[-1].strip()
        raise BundleError(f"{path}: the weights do not fit {cls.__name__}({meta['model']['args']}): "
                          f"{detail[:500]}") from None
    if meta["task"] == "text":
        size = len(Vocab.from_dict(meta["vocab"]))
        if size != model.vocab_size:
            raise BundleError(f"{path}: the vocabulary has {size} characters but the model "
                              f"expects {model.vocab_size}")
    return Bundle(path, model.eval(), meta)
