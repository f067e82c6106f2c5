import json

import numpy as np
import pytest
import torch

from rnnlib.bundle import load_bundle, meta_digest, save_bundle
from rnnlib.config import job_from_dict
from rnnlib.errors import BundleError
from rnnlib.fit import fit
from rnnlib.loop import predict
from rnnlib.tasks import TextTask

FORECAST = {"task": "forecast", "model": {"hidden": 8, "layers": 1},
            "data": {"window": 10, "horizon": 3}, "train": {"epochs": 1, "batch_size": 512}}


@pytest.fixture(scope="module")
def forecast_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "model"
    res = fit(job_from_dict(FORECAST), out=out, log=lambda s: None)
    return res, out


def test_forecast_bundle_round_trip_predicts_identically(forecast_bundle):
    res, out = forecast_bundle
    b = load_bundle(out, task="forecast")
    x = res.task.data.test.x[:200]
    np.testing.assert_array_equal(predict(res.model, x), predict(b.model, x))
    assert set(b.transforms) == set(res.task.data.tickers)
    t = res.task.data.tickers[0]
    np.testing.assert_array_equal(b.transforms[t].scale, res.task.data.transforms[0].scale)
    assert b.meta["metrics"]["rmae"] == pytest.approx(res.metrics["rmae"])
    assert b.meta["versions"]["torch"].startswith("2.")


def test_scale_head_and_drift_centre_round_trip_and_a_bad_head_is_named(tmp_path):
    cfg = {**FORECAST, "model": {**FORECAST["model"], "head": "scale"},
           "data": {**FORECAST["data"], "point_shrink": "drift"}}
    res = fit(job_from_dict(cfg), out=tmp_path / "model", log=lambda s: None)
    b = load_bundle(tmp_path / "model", task="forecast")
    assert b.meta["model"]["args"]["head"] == "scale" and b.data["point_centre"] == "drift"
    x = res.task.data.test.x[:200]
    np.testing.assert_array_equal(predict(res.model, x), predict(b.model, x))
    torch.testing.assert_close(b.model.offsets(), res.model.offsets(), rtol=0, atol=0)  # learned, and kept
    assert not torch.allclose(b.model.offsets(), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3)  # moved off its init
    for key, value, expect in (("head", "mixture", "model.args.head"), ("point_centre", "trend", "data.point_centre")):
        meta = json.loads((tmp_path / "model" / "bundle.json").read_text())
        (meta["model"]["args"] if key == "head" else meta["data"])[key] = value
        meta["meta_sha256"] = meta_digest(meta)
        (tmp_path / "model" / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError, match=expect):
            load_bundle(tmp_path / "model")
        meta["model"]["args"]["head"], meta["data"]["point_centre"] = "scale", "drift"
        meta["meta_sha256"] = meta_digest(meta)
        (tmp_path / "model" / "bundle.json").write_text(json.dumps(meta))


def test_text_bundle_round_trip(tmp_path):
    cfg = job_from_dict({"task": "text", "model": {"hidden": 16, "layers": 1, "embed": 8},
                         "train": {"epochs": 1, "max_batches": 2}})
    task = TextTask(cfg)
    model = task.build_model()
    save_bundle(tmp_path, model, task="text", model_args=task.model_args(), **task.bundle_kwargs())
    b = load_bundle(tmp_path, task="text")
    ids = torch.randint(len(task.vocab), (2, 30))
    torch.testing.assert_close(model.eval()(ids)[0], b.model(ids)[0], rtol=0, atol=0)
    assert b.vocab == task.vocab


def test_wrong_task_tampered_and_mismatched_bundles(forecast_bundle, tmp_path):
    _, out = forecast_bundle
    with pytest.raises(BundleError, match="this is a forecast model; this job needs a text model"):
        load_bundle(out, task="text")
    # tampered weights
    import shutil
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    (bad / "weights.pt").write_bytes((bad / "weights.pt").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="does not match bundle.json"):
        load_bundle(bad)
    # args that do not fit the weights (sha updated so only the shape check can catch it)
    mism = tmp_path / "mismatch"
    shutil.copytree(out, mism)
    meta = json.loads((mism / "bundle.json").read_text())
    meta["model"]["args"]["hidden"] = 9
    meta["meta_sha256"] = meta_digest(meta)  # resealed, so only the shape check can catch it
    (mism / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"the weights do not fit Forecaster.*size mismatch"):
        load_bundle(mism)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_a_bundle_on_s3_loads_leaves_no_download_behind_and_errors_name_the_uri(forecast_bundle, moto_s3):
    import tempfile
    from pathlib import Path

    from rnnlib import storage
    from rnnlib.bundle import open_bundle

    _, _, s3 = moto_s3
    s3.create_bucket(Bucket="bundles")
    res, out = forecast_bundle
    storage.upload_dir(out, "s3://bundles/good")
    downloads = lambda: set(Path(tempfile.gettempdir()).glob("rnnjobs-bundle-*"))  # noqa: E731
    before = downloads()
    b = open_bundle("s3://bundles/good", task="forecast")
    x = res.task.data.test.x[:50]
    np.testing.assert_array_equal(predict(res.model, x), predict(b.model, x))
    meta = json.loads((out / "bundle.json").read_text())
    meta["data"]["window"] = "ten"
    s3.put_object(Bucket="bundles", Key="bad/weights.pt", Body=(out / "weights.pt").read_bytes())
    s3.put_object(Bucket="bundles", Key="bad/bundle.json", Body=json.dumps(meta).encode())
    with pytest.raises(BundleError, match=r"^s3://bundles/bad/bundle\.json: ") as e:
        open_bundle("s3://bundles/bad", task="forecast")
    assert "rnnjobs-bundle-" not in str(e.value)
    assert downloads() == before  # neither load left its download in the temporary folder
