"""Damaged and hostile bundles through the CLI: exit 2, no traceback, the problem named, and no
large allocation on the way (each load runs under an address-space cap).

Forecast cases run `rnnjobs score ... input=<missing>`: a bundle that loads gets as far as the
input listing (exit 2, "no such file or folder"), never to Ray. Text cases run `rnnjobs generate`
for one character."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from jobhelpers import cli

import jobs.cli  # noqa: F401 - imported before any cap, which then measures the load alone
import jobs.generate  # noqa: F401
import jobs.score  # noqa: F401
from rnnlib.bundle import ARG_RULES, MODELS, meta_digest, save_bundle
from rnnlib.config import job_from_dict
from rnnlib.fit import fit
from rnnlib.tasks import TextTask

FORECAST = {"task": "forecast", "model": {"hidden": 8, "layers": 1}, "data": {"window": 10, "horizon": 3},
            "train": {"epochs": 1, "batch_size": 512, "max_batches": 2}}
TEXT = {"task": "text", "model": {"hidden": 8, "layers": 1, "embed": 4}}
HEADROOM = 1 << 30  # a load may map at most this much more address space


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    fit(job_from_dict(FORECAST), out=root / "forecast", log=lambda s: None)
    task = TextTask(job_from_dict(TEXT))
    save_bundle(root / "text", task.build_model(), task="text", model_args=task.model_args(), **task.bundle_kwargs())
    return {"forecast": root / "forecast", "text": root / "text"}


@contextlib.contextmanager
def address_space_cap(extra: int = HEADROOM):
    """RLIMIT_AS at the current size + ``extra``: an allocation the bundle's numbers ask for fails
    (as a traceback, on code that allocates first) instead of exhausting the machine."""
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: no cap, the other assertions still hold
        yield
        return
    import resource

    now = int(next(line for line in status.read_text().splitlines() if line.startswith("VmSize:")).split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = now + extra if hard == resource.RLIM_INFINITY else min(now + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Evil:
    """Unpickling this would create a folder: proof that nothing in weights.pt runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


# Each case: (task, change(folder, meta) -> meta, reseal, expected text). The change edits the
# bundle in place; reseal recomputes meta_sha256, as someone who edits on purpose would, so that
# the check behind the checksum is the one tested.
def drop(*keys):
    def change(d, m):
        obj = m
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
        return m
    return change


def put(value, *keys):
    def change(d, m):
        obj = m
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
        return m
    return change


def weights(write):
    """Replace weights.pt and update weights_sha256 to match it."""
    def change(d, m):
        write(d / "weights.pt", d)
        m["weights_sha256"] = sha(d / "weights.pt")
        return m
    return change


def truncate(p, d):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def evil_zip(p, d):
    torch.save({"backbone.rnn.weight_ih_l0": Evil(d / "PWNED")}, p)


def evil_raw(p, d):
    p.write_bytes(pickle.dumps(Evil(d / "PWNED")))


def a_list(p, d):
    torch.save([torch.zeros(3)], p)


def int_tensors(p, d):
    torch.save({k: v.long() for k, v in torch.load(p, weights_only=True).items()}, p)


def compressed(p, d):
    with zipfile.ZipFile(p) as z:
        records = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in records:
            z.writestr(name, data)


CASES = {
    "meta_not_json": ("forecast", lambda d, m: "{\"format\": ", False, "not valid JSON"),
    "meta_an_array": ("forecast", lambda d, m: "[1, 2]", False, "an array, expected an object"),
    "meta_nested_deep": ("forecast", lambda d, m: "[" * 100_000 + "]" * 100_000, False, "not valid JSON"),
    "edited_not_resealed": ("forecast", put(20, "data", "window"), False,
                            "does not match its checksum (meta_sha256)"),
    "checksum_not_a_string": ("forecast", put(7, "meta_sha256"), False, "does not match its checksum"),
    "missing_model": ("forecast", drop("model"), True, "- model: missing"),
    "missing_args": ("forecast", drop("model", "args"), True, "- model.args: missing"),
    "missing_data_window": ("forecast", drop("data", "window"), True, "- data.window: missing"),
    "missing_weights_sha": ("forecast", drop("weights_sha256"), True, "- weights_sha256: missing"),
    "hidden_a_string": ("forecast", put("8", "model", "args", "hidden"), True,
                        "model.args.hidden: '8' is a string, expected an integer"),
    "layers_a_bool": ("forecast", put(True, "model", "args", "layers"), True,
                      "model.args.layers: True is a boolean, expected an integer"),
    "hidden_absurd": ("forecast", put(2_000_000, "model", "args", "hidden"), True,
                      "model.args.hidden: 2000000 is out of range"),
    "dropout_nan": ("forecast", put(float("nan"), "model", "args", "dropout"), True,
                    "model.args.dropout: nan is out of range"),
    "unknown_arg": ("forecast", put(1, "model", "args", "heads"), True, "model.args.heads: not an argument"),
    "cell_unknown": ("forecast", put("transformer", "model", "args", "cell"), True,
                     "model.args.cell: 'transformer', expected one of"),
    "class_swapped": ("forecast", put("CharLM", "model", "class"), True, "but a forecast bundle holds a Forecaster"),
    "task_unknown": ("forecast", put("image", "task"), True, "task: 'image', expected one of"),
    "task_an_array": ("forecast", put(["forecast"], "task"), True, "task: ['forecast'] is an array"),
    "data_an_array": ("forecast", put([1], "data"), True, "data: [1] is an array, expected an object"),
    "quantiles_vs_outputs": ("forecast", put([0.25, 0.5], "data", "quantiles"), True,
                             "data.quantiles: 2 quantile(s), but the model outputs 3"),
    "horizon_vs_args": ("forecast", put(5, "data", "horizon"), True, "data.horizon: 5, but the model forecasts 3"),
    "columns_vs_features": ("forecast", put(["close", "volume"], "data", "columns"), True,
                            "data.columns: 2 column(s), but the model takes 1"),
    "scaler_loc_a_string": ("forecast", put("x", "scalers", "AAPL", "loc"), True, "scalers.AAPL.loc: 'x' is a string"),
    "args_fit_not_weights": ("forecast", put(16384, "model", "args", "hidden"), True,
                             "size mismatch for backbone.rnn.weight_hh_l0: weights [32, 8], the args need"),
    "layers_not_in_weights": ("forecast", put(8, "model", "args", "layers"), True,
                              "missing backbone.rnn.weight_ih_l1"),
    "weights_truncated": ("forecast", weights(truncate), True, "weights.pt: not a bundle's weights"),
    "weights_evil_pickle": ("forecast", weights(evil_zip), True,
                            "not a bundle's weights: it holds Python objects other than tensors"),
    "weights_evil_raw_pickle": ("forecast", weights(evil_raw), True, "not a bundle's weights: not a PyTorch zip"),
    "weights_a_list": ("forecast", weights(a_list), True, "not a bundle's weights: it holds a list"),
    "weights_int_tensors": ("forecast", weights(int_tensors), True, "not a bundle's weights: it holds a dict"),
    "weights_compressed": ("forecast", weights(compressed), True, "its records are compressed"),
    "vocab_missing": ("text", drop("vocab"), True, "- vocab: missing"),
    "vocab_chars_a_number": ("text", put(5, "vocab", "chars"), True, "vocab.chars: 5 is an integer, expected a string"),
    "vocab_vs_args": ("text", put("abc", "vocab", "chars"), True, "vocab: 3 characters, but the model expects"),
    "vocab_unknown_mode": ("text", put("skip", "vocab", "unknown"), True, "vocab.unknown: 'skip', expected one of"),
    "vocab_size_absurd": ("text", put(10**12, "model", "args", "vocab_size"), True,
                          "model.args.vocab_size: 1000000000000 is out of range"),
}


def command(task: str, folder: Path, tmp_path: Path) -> list:
    if task == "forecast":
        return ["score", "jobs/configs/forecast-score.yaml", f"model={folder}", f"input={tmp_path / 'no-input'}",
                f"output={tmp_path / 'out'}"]
    return ["generate", "--model", folder, "--length", "1"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_bundle_exits_2_naming_the_problem(case, bundles, tmp_path):
    task, change, reseal, expected = CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(bundles[task], folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta = change(folder, meta)
    if isinstance(meta, dict):
        if reseal:
            meta["meta_sha256"] = meta_digest(meta)
        meta = json.dumps(meta)
    (folder / "bundle.json").write_text(meta)
    with address_space_cap():
        code, out = cli(*command(task, folder, tmp_path))
    assert "Traceback" not in out, out
    assert code == 2, out
    assert expected in out, out
    assert "weights_only" not in out, out  # torch's advice to load it unsafely is not passed on
    assert not (folder / "PWNED").exists()


@pytest.mark.parametrize("task", ["forecast", "text"])
def test_good_bundle_and_legacy_bundle_without_checksum_load(task, bundles, tmp_path):
    expected = "no such file or folder" if task == "forecast" else ""
    for legacy in (False, True):
        folder = tmp_path / f"model-{legacy}"
        shutil.copytree(bundles[task], folder)
        if legacy:  # written before meta_sha256 existed
            meta = json.loads((folder / "bundle.json").read_text())
            meta.pop("meta_sha256", None)
            (folder / "bundle.json").write_text(json.dumps(meta, indent=4))
        code, out = cli(*command(task, folder, tmp_path))
        assert code == (2 if task == "forecast" else 0) and expected in out and "Traceback" not in out, out


def test_checksum_survives_reformatting(bundles, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(bundles["forecast"], folder)
    meta = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps(meta, indent=None, sort_keys=True, ensure_ascii=True))
    code, out = cli(*command("forecast", folder, tmp_path))
    assert code == 2 and "no such file or folder" in out, out


def test_every_model_argument_has_a_bound():
    for cls in MODELS.values():
        assert set(inspect.signature(cls).parameters) <= set(ARG_RULES), cls
