"""One small Optuna search on the session's shared Ray, checked end to end against what Ray Tune
recorded of each trial; then ``rnnjobs report`` on that search (a search folder also holds its best
trial's model exported as a training run's: metrics.json + model/, written by the train job's
``export_model``) and on a score run of that model, its figures checked against the artefacts.

One search serves both: it is the slowest step, and the report needs one anyway."""

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import optional
from jobhelpers import cli_run, run

from rnnlib import publish, storage
from rnnlib.datasets import sample_stocks_dir
from rnnlib.tables import cell

pytestmark = [pytest.mark.slow(seconds=40), pytest.mark.timeout(600)]

SAMPLES = 3
SEARCH = ["tune", "jobs/configs/forecast-tune.yaml", "tune.searcher=optuna", f"tune.num_samples={SAMPLES}",
          "tune.seed=5", "tune.cpus_per_trial=0.5", "train.epochs=2", "train.max_batches=8", "train.patience=0",
          "model.hidden=8",
          "search={model.cell: {choice: [rnn, gru]}, data.window: {choice: [10, 20]}, "
          "train.lr: {loguniform: [1.0e-3, 1.0e-1]}}"]
KEYS = ("model.cell", "data.window", "train.lr")
TICKERS = ("AAPL", "JPM", "XOM")


@pytest.fixture(scope="module")
def histories(tmp_path_factory) -> Path:
    """Three tickers of the bundled sample, one row of JPM's with a negative close (a row the jobs
    drop, so that rows in, kept and rejected differ): the search trains on them, the score run
    scores them."""
    inp = tmp_path_factory.mktemp("histories")
    for t in TICKERS:
        shutil.copy(sample_stocks_dir() / f"{t}_data.csv", inp / f"{t}_data.csv")
    jpm = inp / "JPM_data.csv"
    lines = jpm.read_text().splitlines()
    cells = lines[500].split(",")
    cells[4] = "-" + cells[4]  # date,open,high,low,close,volume,Name
    lines[500] = ",".join(cells)
    jpm.write_text("\n".join(lines) + "\n")
    return inp


@pytest.fixture(scope="module")
def search(histories, tmp_path_factory, shared_ray) -> tuple[Path, str]:
    """(the search's folder, the job's stdout)."""
    optional("optuna")
    root = tmp_path_factory.mktemp("optuna")
    r = run(*SEARCH, f"data.path={histories}", f"storage={root}", env=shared_ray)
    assert r.returncode == 0, r.stderr[-3000:]
    name = re.search(r"^search (\S+):", r.stdout, re.M).group(1)
    return root / name, r.stdout


def trials_as_recorded(d: Path) -> pd.DataFrame:
    """Each trial as Ray Tune wrote it in its own folder (params.json, one result.json line per
    epoch), not through the job's results table."""
    rows = []
    for t in sorted(d.glob("trial_*")):
        epochs = [json.loads(line) for line in (t / "result.json").read_text().splitlines() if line.strip()]
        params = json.loads((t / "params.json").read_text())
        rows.append({"trial_id": epochs[-1]["trial_id"], **{k: params[k] for k in KEYS},
                     "epochs": max(e["epoch"] for e in epochs), "best_val_loss": min(e["val_loss"] for e in epochs)})
    return pd.DataFrame(rows)


def results(d: Path) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(str(d / "results.parquet"))))


def test_optuna_search_runs_every_trial_and_reports_a_best_trial(search):
    d, out = search
    assert "optuna search" in out.splitlines()[0]
    assert list(d.glob("searcher-state-*.pkl")), "no searcher state: Optuna did not drive the search"
    recorded = trials_as_recorded(d)
    assert len(recorded) == SAMPLES and recorded["trial_id"].is_unique
    assert len(re.findall(rf"^\[\d+/{SAMPLES}\] ", out, re.M)) == SAMPLES  # a progress line per finished trial
    df = results(d)
    assert len(df) == SAMPLES and (df["status"] == "done").all()
    merged = df.merge(recorded, on="trial_id", suffixes=("", "_recorded"))
    assert len(merged) == SAMPLES
    for k in ("epochs", "best_val_loss", *KEYS):
        assert merged[k].tolist() == merged[f"{k}_recorded"].tolist(), k
    # the best config it exports is that of a trial with the lowest val loss any trial recorded
    best = recorded[recorded["best_val_loss"] == recorded["best_val_loss"].min()]
    cfg = yaml.safe_load((d / "best.yaml").read_text())
    chosen = (cfg["model"]["cell"], cfg["data"]["window"], cfg["train"]["lr"])
    assert chosen in [tuple(r) for r in best[list(KEYS)].itertuples(index=False)], (chosen, recorded)
    trial = re.search(r"The best trial \((\w+)\)", (d / "best.yaml").read_text()).group(1)
    assert trial in best["trial_id"].tolist()
    m = json.loads((d / "metrics.json").read_text())
    assert m["trial"] == trial and min(h["val_loss"] for h in m["history"]) == pytest.approx(
        best["best_val_loss"].iloc[0], rel=1e-9)
    # the table it prints ranks that trial first
    first = re.search(r"^\| 1 +\| (\w+) ", out, re.M).group(1)
    assert first == trial


@pytest.fixture(scope="module")
def score_run(search, histories, tmp_path_factory, shared_ray) -> str:
    """A score run of the search's best model on the histories it was trained on: its URI."""
    d, _ = search
    tmp = tmp_path_factory.mktemp("score")
    r = run("score", "jobs/configs/forecast-score.yaml", f"model={d / 'model'}", f"input={histories}",
            f"output={tmp / 'out'}", "actors=1", env=shared_ray)
    assert r.returncode == 0, r.stderr[-3000:]
    return publish.resolve(str(tmp / "out"))


def table_rows(md: str, header: str) -> list[list[str]]:
    """The body of the Markdown table whose header row starts with ``header``."""
    lines = md.splitlines()
    start = next(i for i, li in enumerate(lines) if li.startswith(f"| {header}"))
    rows = []
    for li in lines[start + 2:]:
        if not li.startswith("|"):
            break
        rows.append([c.strip() for c in li.strip("|").split("|")])
    return rows


def f4(v: float) -> str:
    """A figure as the report's tables write it."""
    return cell(float(v))


def test_report_figures_equal_the_artefacts(search, score_run, histories, tmp_path):
    d, _ = search
    run_uri = score_run
    r = cli_run("report", d, run_uri, "--out", tmp_path / "report")

    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "report" / "report.md").read_text()
    search_md, rest = md.split("## Training:")
    train_md, score_md = rest.split("## Score run:")

    # the search: counts and the top trials from results.parquet
    df = results(d)
    assert (f"{len(df)} trials, {int((df['stopped'] == 'asha').sum())} stopped early by ASHA, "
            f"{int(df['epochs'].sum())} trial-epochs.") in search_md
    top = table_rows(search_md, "#")
    assert len(top) == min(5, len(df))
    for row, (_, want) in zip(top, df.iterrows()):
        assert row[1] == want["trial_id"] and row[-1] == f4(want["best_val_loss"])
        assert int(row[-3]) == want["epochs"] and row[-2] == want["stopped"]

    # the best trial's training: epochs, best epoch and every test metric from metrics.json
    m = json.loads((d / "metrics.json").read_text())
    c = m["config"]
    assert (f"forecast: {c['model']['cell']} {c['model']['layers']}x{c['model']['hidden']}, "
            f"{len(m['history'])} epochs, best at epoch {m['best_epoch'] + 1}.") in train_md
    best = min(range(len(m["history"])), key=lambda i: m["history"][i]["val_loss"])
    assert m["best_epoch"] == m["history"][best]["epoch"]
    metrics = {row[0]: row[1:] for row in table_rows(train_md, "test metric")}
    final = m["final"]
    for name, key in (("MAE", "mae"), ("RMSE", "rmse"), ("sMAPE %", "smape"), ("MASE", "mase"),
                      ("directional accuracy", "directional_accuracy")):
        assert metrics[name] == [f4(final["model"][key]), f4(final["persistence"][key])], name
    assert metrics[f"{final['interval']}% band coverage"][0] == f4(final["model"]["coverage"])
    assert metrics["rMAE (model / persistence)"] == [f4(final["rmae"]), f4(1.0)]
    assert re.search(rf"the model beats persistence on \d+ of {final['series']} tickers", train_md)

    # the score run: every count from its manifest, which agree with the input and the forecasts
    _, man = publish.read_manifest(run_uri)
    n = man["counts"]
    assert (f"{n['series_scored']} series scored, {n['series_rejected']} rejected, {n['rows_rejected']} rows "
            f"rejected of {n['rows_in']}, {n['forecast_rows']} forecast rows") in score_md
    assert f"model `{man['model']['uri']}`" in score_md and score_md.lstrip().startswith(f"`{run_uri}`")
    rows_in = sum(len(pd.read_csv(histories / f"{t}_data.csv")) for t in TICKERS)
    fc = publish.read_kind(run_uri, "forecasts")
    assert (n["rows_in"], n["series_scored"] + n["series_rejected"], n["forecast_rows"]) == (
        rows_in, len(TICKERS), len(fc))
    assert n["series_scored"] == fc["ticker"].nunique() > 0 and n["rows_rejected"] == 1
    assert n["forecast_rows"] == n["series_scored"] * c["data"]["horizon"]
