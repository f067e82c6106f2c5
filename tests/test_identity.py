"""A training run's identity is its config and its data by content: new data makes a new run (a
weekly retrain trains), the same data resumes or finds the finished run (whatever the files'
times), and ``data.end`` pins a backfill to what was known then. No Ray: naming happens first."""

import json
import os
import shutil

import pandas as pd
import pytest
from conftest import ROOT

from jobs import train
from rnnlib.config import load_job, to_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import UserError
from rnnlib.tasks import make_task

CONFIG = str(ROOT / "jobs" / "configs" / "forecast-train.yaml")
TICKERS = ("KO", "AAPL", "XOM")


@pytest.fixture
def histories(tmp_path):
    d = tmp_path / "histories"
    d.mkdir()
    for t in TICKERS:
        shutil.copy(sample_stocks_dir() / f"{t}_data.csv", d / f"{t}_data.csv")
    return d


def name_of(data_dir, *overrides):
    cfg = load_job(CONFIG, [f"data.path={data_dir}", "data.window=20", *overrides])
    task = make_task(cfg)
    return train.run_name(cfg, task.fingerprint()), task


def add_day(path, date: str) -> None:
    df = pd.read_csv(path)
    last = df.iloc[-1].copy()
    last["date"], last["close"] = date, float(last["close"]) * 1.01
    pd.concat([df, last.to_frame().T]).to_csv(path, index=False)


def test_new_data_makes_a_new_run_and_data_end_pins_a_backfill(histories):
    first, task = name_of(histories)
    last_day = task.fingerprint()["last"]
    assert last_day == "2018-02-07" and task.fingerprint()["series"] == 3
    for f in histories.iterdir():  # touched, copied, re-uploaded: the same content is the same run
        os.utime(f, (1, 1))
    assert name_of(histories)[0] == first
    pinned, _ = name_of(histories, f"data.end={last_day}")

    add_day(histories / "KO_data.csv", "2018-02-08")  # tomorrow's prices arrive
    refreshed, task = name_of(histories)
    assert refreshed != first and task.fingerprint()["last"] == "2018-02-08"
    # trained up to a date, the run is the same before and after later data arrives
    again, task = name_of(histories, f"data.end={last_day}")
    assert again == pinned and task.fingerprint()["last"] == last_day
    assert task.hist.rows_after_end == 1 and "1 rows after data.end 2018-02-07 left out" in task.hist.summary()

    # a corrected price inside the history is new data too
    df = pd.read_csv(histories / "XOM_data.csv")
    df.loc[100, "close"] += 0.01
    df.to_csv(histories / "XOM_data.csv", index=False)
    assert name_of(histories, f"data.end={last_day}")[0] != pinned


def test_text_corpus_identity_is_its_content(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question:\n" * 400)
    cfg = load_job(str(ROOT / "jobs" / "configs" / "text-train.yaml"), [f"data.path={corpus}"])
    before = train.run_name(cfg, make_task(cfg).fingerprint())
    os.utime(corpus, (1, 1))
    assert train.run_name(cfg, make_task(cfg).fingerprint()) == before
    corpus.write_text("To be, or not to be, that is the question?\n" * 400)
    assert train.run_name(cfg, make_task(cfg).fingerprint()) != before


def test_a_finished_run_is_found_only_for_the_same_data(histories, tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = load_job(CONFIG, [f"data.path={histories}", "data.window=20", "name=weekly", f"storage={runs}"])
    data = make_task(cfg).fingerprint()
    (runs / "weekly").mkdir(parents=True)
    (runs / "weekly" / "metrics.json").write_text(json.dumps({"config": to_dict(cfg), "data": data}))
    assert train.train(cfg) == (0, str(runs / "weekly"))  # finished: no Ray started
    assert "already finished" in capsys.readouterr().out

    add_day(histories / "AAPL_data.csv", "2018-02-08")
    other = "trained on other data .that run: .*to 2018-02-07.* now: .*to 2018-02-08.*leave name unset"
    with pytest.raises(UserError, match=other):
        train.train(cfg)
