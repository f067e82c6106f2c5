"""The device rule on a machine without a GPU: every path that runs a model must put the model
and the tensors it meets on the device it chose. The chosen device here is ``meta`` (shapes, no
data), and a stand-in records what the first forward pass sees, then stops the path there. A path
that leaves the model on the CPU (the tune and scoring bugs this guards) shows up as a mix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import jobs.generate
import jobs.score
import jobs.train
import jobs.tune
from rnnlib import device as dev
from rnnlib.config import job_from_dict
from rnnlib.errors import UserError
from rnnlib.fit import fit
from rnnlib.models import CharLM, Forecaster

META = torch.device("meta")
FORECAST = {"task": "forecast", "model": {"hidden": 8, "layers": 1}, "data": {"window": 10, "horizon": 3},
            "train": {"epochs": 1, "batch_size": 512, "max_batches": 2}}
TEXT = {"task": "text", "model": {"cell": "gru", "hidden": 16, "layers": 1, "embed": 8},
        "data": {"seq_len": 32}, "train": {"epochs": 1, "max_batches": 2}}


class Reached(Exception):
    """Raised by the stand-in at the first forward pass: the path got there; nothing more to run."""


@pytest.fixture
def first_forward():
    """Records the devices of the model's weights and inputs at its first forward pass."""
    seen: dict = {}

    def hook(module, args):
        if isinstance(module, (Forecaster, CharLM)):
            seen["weights"] = {p.device for p in module.parameters()}
            seen["inputs"] = {a.device for a in args if isinstance(a, torch.Tensor)}
            raise Reached

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def assert_all_on(seen: dict, device: torch.device) -> None:
    assert seen, "no forward pass was reached"
    assert seen["weights"] == {device}, f"model weights on {seen['weights']}, chose {device}"
    assert seen["inputs"] == {device}, f"inputs on {seen['inputs']}, chose {device}"


@pytest.fixture
def gpu_is_meta(monkeypatch):
    """Where a job asks for the GPU, hand it ``meta``; record what each job asked for."""
    asked, real = [], dev.choose

    def choose(want):
        asked.append(want)
        return META if want in (True, "cuda", "auto") else real(want)

    # jobs.score imports rnnlib.device where it places the model (its read tasks stay free of torch)
    for module in (jobs.tune, jobs.generate, dev):
        monkeypatch.setattr(module, "choose", choose)
    return asked


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    fit(job_from_dict(FORECAST), out=out / "forecast", log=lambda s: None)
    fit(job_from_dict(TEXT), out=out / "text", log=lambda s: None)
    return out


def test_choose():
    assert dev.choose(False) == dev.choose("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert dev.choose("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="a GPU was asked for but torch sees none"):
            dev.choose(True)


def test_choose_gpu_when_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.choose(True) == dev.choose("cuda") == dev.choose("auto") == torch.device("cuda")


@pytest.mark.parametrize("cfg", [FORECAST, TEXT], ids=["forecast", "text"])
def test_fit_trains_on_the_chosen_device(cfg, first_forward):
    with pytest.raises(Reached):
        fit(job_from_dict(cfg), device="meta", log=lambda s: None)
    assert_all_on(first_forward, META)


def test_train_loop_moves_the_model_it_builds(first_forward):
    """Ray Train workers and Tune process trials share train_loop: it builds the model, so it must
    place it (Ray Train's prepare_model would too; a Tune trial has no prepare)."""
    with pytest.raises(Reached):
        jobs.train.train_loop(job_from_dict(FORECAST), None, lambda m, f: None, device=META)
    assert_all_on(first_forward, META)


def test_tune_process_trial_with_gpus_trains_there(monkeypatch, first_forward, gpu_is_meta, tmp_path):
    from types import SimpleNamespace

    import ray.tune

    from rnnlib.search import load_search

    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t_00000"))
    search = load_search("jobs/configs/forecast-tune.yaml",
                         ["tune.gpus_per_trial=0.25", "model.hidden=8", "data.window=10"])
    with pytest.raises(Reached):
        jobs.tune.process_trial({}, search, exp_uri=str(tmp_path))
    assert gpu_is_meta == [True]
    assert_all_on(first_forward, META)


def test_scoring_actor_with_gpu_scores_there(bundles, first_forward, gpu_is_meta, tmp_path):
    import pandas as pd

    from rnnlib.datasets import sample_stocks_dir
    from rnnlib.sources import list_source

    listing = list_source(str(sample_stocks_dir()))
    actor = jobs.score.ScoreBatch(
        model=str(bundles / "forecast"), run_uri=str(tmp_path / "run"), attempt="a", endpoint_url=None, gpu=True,
        settings={"mode": "forecast", "as_of": None, "backtest_days": 250, "step": 0, "batch_size": 512,
                  "columns": {}})
    with pytest.raises(Reached):
        actor(pd.DataFrame({"entry": [e.to_json() for e in listing.entries[:3]]}))
    assert gpu_is_meta == [True]
    assert_all_on(first_forward, META)


def test_generate_and_evaluate_run_on_the_chosen_device(bundles, first_forward, gpu_is_meta):
    with pytest.raises(Reached):
        jobs.generate.run(None, [], {"model": str(bundles / "text"), "prompt": "ROMEO:", "length": 5})
    assert_all_on(first_forward, META)
    first_forward.clear()
    with pytest.raises(Reached):
        jobs.generate.run_evaluate(str(bundles / "text"), None, None, None, device="cuda")
    assert_all_on(first_forward, META)
    assert gpu_is_meta == ["auto", "cuda"]


def test_bf16_trains_on_cpu_and_fp16_needs_a_gpu():
    cfg = job_from_dict({**FORECAST, "train": {"epochs": 3, "batch_size": 256, "precision": "bf16", "seed": 1}})
    res = fit(cfg, log=lambda s: None)
    h = res.history
    assert all(math.isfinite(e["val_loss"]) for e in h) and h[-1]["train_loss"] < h[0]["train_loss"]
    assert 0.8 < res.metrics["rmae"] < 1.2
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        fit(job_from_dict({**FORECAST, "train": {"precision": "fp16"}}), log=lambda s: None)


def test_no_finite_val_loss_is_a_clear_error(monkeypatch):
    import rnnlib.fit

    monkeypatch.setattr(rnnlib.fit.loop, "evaluate", lambda *a, **k: float("nan"))
    with pytest.raises(UserError, match="no epoch of 1 gave a finite validation loss"):
        fit(job_from_dict(FORECAST), log=lambda s: None)


def test_predict_follows_the_model(first_forward):
    model = dev.place(Forecaster(n_features=1, horizon=2, n_outputs=3, hidden=4), META)
    with pytest.raises(Reached):
        from rnnlib.loop import predict

        predict(model, np.zeros((5, 10, 1), np.float32))
    assert_all_on(first_forward, META)

