import numpy as np
import pytest

from rnnlib.config import job_from_dict
from rnnlib.fit import fit
from rnnlib.metrics import compare_to_persistence, forecast_metrics, text_metrics


def test_forecaster_learns_and_reports_against_persistence():
    cfg = job_from_dict({"model": {"hidden": 16, "layers": 1}, "data": {"window": 20, "horizon": 5},
                         "train": {"epochs": 3, "batch_size": 256, "seed": 1}})
    res = fit(cfg, log=lambda s: None)
    h = res.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    m = res.metrics
    assert m["series"] == 26 and m["windows"] > 1000
    assert set(m) >= {"model", "persistence", "rmae", "pinball", "interval"}
    # a sane forecaster on returns is close to persistence, never wildly off
    assert 0.8 < m["rmae"] < 1.1
    assert 0.6 < m["model"]["coverage"] < 0.95


def test_char_model_val_loss_goes_down():
    cfg = job_from_dict({"task": "text", "model": {"cell": "gru", "hidden": 64, "layers": 1, "embed": 16},
                         "data": {"seq_len": 64}, "train": {"epochs": 3, "max_batches": 25, "lr": 0.01}})
    res = fit(cfg, log=lambda s: None)
    vals = [e["val_loss"] for e in res.history]
    assert vals[-1] < vals[0] < np.log(65) + 0.1  # better than uniform over 65 characters
    assert res.metrics["val"]["bits_per_char"] == pytest.approx(vals[-1] / np.log(2))


def test_metrics_known_values():
    actual = np.array([[11.0, 12.0], [9.0, 9.0]])
    pred = np.array([[10.5, 12.5], [9.5, 8.0]])
    last = np.array([10.0, 10.0])
    m = forecast_metrics(actual, pred, last, scale=np.array([1.0, 2.0]), lo=pred - 1, hi=pred + 1)
    assert m["mae"] == pytest.approx(0.625)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0.25 + 1) / 4))
    assert m["mase"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.5) / 4)
    assert m["directional_accuracy"] == 1.0
    assert m["coverage"] == 1.0
    c = compare_to_persistence(actual, pred, last, np.ones(2))
    assert c["persistence"]["mae"] == pytest.approx((1 + 2 + 1 + 1) / 4)
    assert c["rmae"] == pytest.approx(0.625 / 1.25)
    assert text_metrics(np.log(2))["bits_per_char"] == pytest.approx(1.0)


def test_early_stopping_returns_the_best_epochs_weights_not_the_last(tmp_path):
    """A char model that overfits a short text: validation improves, then gets worse for
    ``patience`` epochs; fit stops there and hands back the best epoch's model."""
    import torch

    from rnnlib.datasets import tinyshakespeare_path
    from rnnlib.tasks import evaluate_text

    text = tmp_path / "short.txt"
    text.write_text(tinyshakespeare_path().read_text(encoding="utf-8")[:6000], encoding="utf-8")
    job = {"task": "text", "model": {"cell": "gru", "hidden": 64, "embed": 16, "layers": 1},
           "data": {"path": str(text), "seq_len": 32, "val_frac": 0.4},
           "train": {"epochs": 15, "batch_size": 8, "lr": 0.05, "patience": 2, "seed": 0}}
    res = fit(job_from_dict(job), log=lambda s: None)
    vals = [h["val_loss"] for h in res.history]
    best = int(np.argmin(vals))
    # the case holds: worse after the best epoch, for exactly patience epochs, then stopped early
    assert len(vals) == best + 1 + 2 < 15 and min(vals[best + 1:]) > vals[best], vals
    # the returned model scores the best epoch's val loss (recomputed here), not the last one's
    val = evaluate_text(res.model, res.task.val_ids, 32)["nats_per_char"]
    assert val == pytest.approx(vals[best], rel=1e-6) and val != pytest.approx(vals[-1], rel=1e-3)
    # and holds the best epoch's weights: those of the same run stopped right after it
    upto = fit(job_from_dict({**job, "train": {**job["train"], "epochs": best + 1, "patience": 0}}),
               log=lambda s: None)
    assert [h["val_loss"] for h in upto.history] == vals[:best + 1]
    got, want = res.model.state_dict(), upto.model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_train_state_reports_replays_what_record_reported():
    from rnnlib.fit import TrainState

    state, reported = TrainState(), []
    for val in (3.0, 2.0, 2.5, 2.6, 1.0):
        state.record(train_loss=val + 1, val_loss=val, seconds=1.0, train_seconds=0.5)
        reported.append({**state.history[-1], "epoch": state.epoch, "stale": state.stale})
    assert state.reports(0) == reported
    assert [r["epoch"] for r in state.reports(3)] == [4, 5] and state.reports(5) == []
