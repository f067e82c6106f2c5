"""MLflow tracking (tracking.mlflow_uri) against a local store in tmp_path (SQLite, artifacts beside
it): what each job logs equals what it wrote (metrics.json, results.parquet, the manifest, the
registry's gate record); a rerun logs nothing twice; without the setting nothing imports mlflow;
with it and no mlflow installed the job stops before Ray with the extra's install line."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, optional
from jobhelpers import cli, run

from rnnlib import publish, storage
from rnnlib.datasets import sample_stocks_dir

pytestmark = [pytest.mark.slow(seconds=90), pytest.mark.timeout(600)]

TRAIN = ["train", "jobs/configs/forecast-train.yaml", "model.hidden=8", "data.window=20", "train.epochs=2",
         "release.model=fc"]
SCORE = ["score", "jobs/configs/forecast-score.yaml", "model=models://fc/1", "mode=backtest", "backtest_days=40"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, MlflowClient) of a fresh local store."""
    mlflow = optional("mlflow")
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, mlflow.MlflowClient(tracking_uri=uri)


def runs_of(client, kind: str, **tags) -> list:
    exp = client.get_experiment_by_name("rnnjobs")
    where = " and ".join([f"tags.`rnnjobs.kind` = '{kind}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    return client.search_runs([exp.experiment_id], where) if exp else []


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifact(client, run_id: str, path: str) -> bytes:
    return Path(client.download_artifacts(run_id, path)).read_bytes()


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def trained(store, shared_ray, tmp_path_factory):
    """A tracked training run with release.model set: (run folder, registry, env)."""
    uri, _ = store
    root = tmp_path_factory.mktemp("tracked")
    env = {**shared_ray, "RNNJOBS_REGISTRY": str(root / "registry")}
    args = [*TRAIN, f"storage={root / 'runs'}", f"release.registry={root / 'registry'}", f"tracking.mlflow_uri={uri}"]
    r = run(*args, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (d,) = (root / "runs").iterdir()
    return d, root / "registry", env, args


@pytest.fixture(scope="module")
def scored(store, trained, tmp_path_factory):
    uri, _ = store
    out = tmp_path_factory.mktemp("scored") / "out"
    args = [*SCORE, f"output={out}", f"tracking.mlflow_uri={uri}"]
    r = run(*args, env=trained[2])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (success,) = [u for u, _, _ in storage.list_files(str(out), recursive=True) if u.endswith("/_SUCCESS")]
    return success.rsplit("/", 1)[0], args


def test_train_run_params_epochs_test_metrics_model_and_release(store, trained):
    _, client = store
    d, registry, _, _ = trained
    m = json.loads((d / "metrics.json").read_text())
    (r,) = runs_of(client, "train", **{"rnnjobs.run": d.name})
    assert r.info.run_name == d.name and r.info.status == "FINISHED"
    tags, params = r.data.tags, r.data.params
    assert (tags["task"], tags["cell"], tags["data_sha256"]) == ("forecast", "lstm", m["data"]["sha256"])
    # params: the trained config, flattened; what does not change the model (storage, scaling) is no param
    trained_cfg = {k: v for k, v in m["config"].items() if k not in ("name", "storage", "endpoint_url", "scaling",
                                                                      "release", "tracking")}
    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(trained_cfg).items()
                if k not in ("train.max_failures", "train.keep_checkpoints")}
    assert params == expected
    assert (params["model.hidden"], params["data.window"], params["train.epochs"]) == ("8", "20", "2")
    # two epochs, each logged once, with metrics.json's values
    for key in ("val_loss", "train_loss", "seconds"):
        assert history(client, r.info.run_id, key) == [(h["epoch"], h[key]) for h in m["history"]]
    assert len(m["history"]) == 2
    final = r.data.metrics
    assert final["final.rmae"] == m["final"]["rmae"] and final["final.pinball"] == m["final"]["pinball"]
    assert final["final.model.mase"] == m["final"]["model"]["mase"]
    for name in ("bundle.json", "weights.pt"):
        assert artifact(client, r.info.run_id, f"model/{name}") == (d / "model" / name).read_bytes()
    assert json.loads(artifact(client, r.info.run_id, "metrics.json")) == json.loads((d / "metrics.json").read_text())
    # the release step: the version registered and the gate's decision and figures, as the registry recorded them
    (record_file,) = (registry / "fc" / "1" / "gates").iterdir()
    record = json.loads(record_file.read_text())
    assert (tags["release.model"], tags["release.version"], tags["release.registered"]) == ("fc", "1", "new")
    assert tags["gate.decision"] == ("promoted" if record["promote"] else "refused")
    for side in ("candidate", "persistence"):
        for fig in ("rmae", "pinball", "points"):
            assert final[f"gate.{side}.{fig}"] == record["figures"][side][fig]
    logged = json.loads(artifact(client, r.info.run_id, "gate.json"))
    assert (logged["version"], logged["promote"], logged["reasons"]) == (1, record["promote"], record["reasons"])
    assert {k: logged["figures"][k] for k in ("candidate", "persistence")} == \
        {k: record["figures"][k] for k in ("candidate", "persistence")}


def test_score_run_params_counts_backtest_means_and_manifest(store, scored):
    _, client = store
    run_uri, _ = scored
    _, manifest = publish.read_manifest(run_uri)
    (r,) = runs_of(client, "score")
    day = run_uri.split("/as_of=")[1].split("/")[0]
    assert r.info.run_name == f"score-{day}-{manifest['run_id']}" and r.info.status == "FINISHED"
    p = r.data.params
    assert (p["mode"], p["model"], p["model.version"]) == ("backtest", "models://fc/1", "1")
    assert p["model.uri"] == manifest["model"]["uri"] and p["input"] == manifest["input"]["uri"]
    metrics = r.data.metrics
    assert {k.removeprefix("counts."): v for k, v in metrics.items() if k.startswith("counts.")} == \
        manifest["counts"]
    assert metrics["counts.series_scored"] == 26
    per_ticker = publish.read_kind(run_uri, "metrics")
    for k in ("rmae", "coverage", "pinball"):
        assert metrics[f"backtest.{k}"] == pytest.approx(per_ticker[k].mean(), rel=1e-12)
    assert json.loads(artifact(client, r.info.run_id, "manifest.json")) == manifest


def test_reruns_log_nothing_twice_and_untracked_runs_never_import_mlflow(store, trained, scored):
    """One process, no Ray: the finished train run, the published score run and `check` without
    tracking (mlflow never imported), then the train run again with tracking (logged already)."""
    _, client = store
    d, _, env, train_args = trained
    untracked = [a for a in train_args if not a.startswith("tracking.")]
    score_untracked = [a for a in scored[1] if not a.startswith("tracking.")]
    script = (f"import sys\nfrom jobs.cli import main\n"
              f"codes = [main({untracked!r}), main({score_untracked!r}), main({['check', *TRAIN[1:5]]!r})]\n"
              f"print('IMPORTED', 'mlflow' in sys.modules, 'ray' in sys.modules, codes)\n"
              f"print('AGAIN', main({train_args!r}))\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=240)
    assert "IMPORTED False False [0, 0, 0]" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    assert "AGAIN 0" in p.stdout and p.stdout.count("already finished") == 2
    (r,) = runs_of(client, "train", **{"rnnjobs.run": d.name})  # still one run, each epoch once
    assert len(history(client, r.info.run_id, "val_loss")) == 2
    assert r.data.tags["release.registered"] == "new"


def test_promote_and_gate_with_mlflow_uri_log_the_move_and_the_decision(store, trained):
    uri, client = store
    d, registry, _, _ = trained
    code, out = cli("models", "register", "fc", d / "model", "--registry", registry)
    assert code == 0, out
    code, out = cli("models", "promote", "fc", "2", "--registry", registry, "--reason", "test move",
                    "--figure", "rmae=0.91", "--mlflow-uri", uri)
    assert code == 0, out
    (r,) = runs_of(client, "promotion")
    move = json.loads(max((registry / "fc" / "aliases" / "champion").iterdir()).read_text())
    assert (move["version"], move["reason"]) == (2, "test move")
    p = r.data.params
    assert (p["name"], p["alias"], p["version"], p["previous"], p["reason"]) == \
        ("fc", "champion", "2", json.dumps(move["previous"]), "test move")
    assert r.data.metrics == {"figures.rmae": 0.91} and r.data.tags["train_run"] == d.name
    assert json.loads(artifact(client, r.info.run_id, "move.json")) == move
    # version 1 gated against the champion (now version 2, the same weights), nothing moved
    code, out = cli("models", "gate", "fc", "1", "--registry", registry, "--histories", sample_stocks_dir(),
                    "--days", "20", "--dry-run", "--mlflow-uri", uri)
    assert code in (0, 1), out
    (g,) = runs_of(client, "gate")
    record = json.loads(max((registry / "fc" / "1" / "gates").iterdir()).read_text())
    assert (record["champion"], record["settings"]["days"]) == (2, 20)
    assert (g.data.params["version"], g.data.params["champion"], g.data.params["settings.days"]) == ("1", "2", "20")
    assert g.data.tags["gate.decision"] == ("passed" if code == 0 else "refused") and g.info.status == "FINISHED"
    for side in ("candidate", "champion", "persistence"):
        assert g.data.metrics[f"gate.{side}.rmae"] == record["figures"][side]["rmae"]


def test_tune_parent_run_and_a_child_run_per_trial(store, shared_ray, tmp_path):
    uri, client = store
    r = run("tune", "jobs/configs/forecast-tune.yaml", "search={model.cell: {choice: [rnn, gru]}}",
            "tune.num_samples=2", "tune.scheduler=fifo", "train.epochs=2", "model.hidden=8", "data.window=20",
            f"storage={tmp_path}", f"tracking.mlflow_uri={uri}", env=shared_ray)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (exp,) = tmp_path.iterdir()
    df = pd.read_parquet(exp / "results.parquet")
    (parent,) = runs_of(client, "tune", **{"rnnjobs.run": exp.name})
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.model.cell"] == "choice of ['rnn', 'gru']"
    assert parent.data.metrics["best_val_loss"] == df["best_val_loss"].min()
    assert parent.data.tags["best_trial"] == df.iloc[0]["trial_id"]
    assert pd.read_csv(io.BytesIO(artifact(client, parent.info.run_id, "results.csv"))).equals(
        pd.read_csv(exp / "results.csv"))
    children = runs_of(client, "trial", **{"mlflow.parentRunId": parent.info.run_id})
    assert len(children) == 2 == len(df)
    for child in children:
        (row,) = [row for row in df.to_dict("records") if child.data.tags["trial_name"].endswith(row["trial_id"])]
        assert child.info.status == "FINISHED" and child.data.params == {"model.cell": row["model.cell"]}
        vals = history(client, child.info.run_id, "val_loss")
        assert [step for step, _ in vals] == [1, 2]  # one result per epoch
        assert min(v for _, v in vals) == row["best_val_loss"] and vals[-1][1] == row["last_val_loss"]


def test_without_mlflow_installed_the_job_stops_before_ray(tmp_path):
    shim = tmp_path / "shim" / "mlflow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named mlflow (a test shim)')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "shim"), os.environ.get("PYTHONPATH")]))}
    r = run(*TRAIN[:5], f"storage={tmp_path / 'runs'}", f"tracking.mlflow_uri=sqlite:///{tmp_path}/m.db", env=env,
            timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "pip install 'rnnjobs[mlflow]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()
    # credentials in the URI are refused with where MLflow takes them from
    code, out = cli("check", *TRAIN[1:3], "tracking.mlflow_uri=https://user:secret@mlflow.example:5000")
    assert code == 2 and "secret" not in out and "MLFLOW_TRACKING_USERNAME" in out
