from datetime import date

import pytest
import yaml
from conftest import ROOT

from rnnlib.config import (
    ConfigError,
    ScoreConfig,
    TextDataConfig,
    apply_overrides,
    job_from_dict,
    load_job,
    section_from_dict,
)
from rnnlib.search import load_search


def all_yaml():
    skip = {".venv", ".git", "node_modules", "outputs"}
    return sorted(p for p in ROOT.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")
                  and not skip & set(p.relative_to(ROOT).parts))


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_parses_and_opens_with_a_comment(path):
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("#"), f"{path} must open with a comment: purpose and launch command"
    docs = list(yaml.safe_load_all(text))
    assert docs and all(d is not None for d in docs)
    if path.parent.name == "configs" and path.parent.parent.name == "jobs" and "task" in docs[0]:
        (load_search if "search" in docs[0] else load_job)(path)  # job and search configs also validate


def test_job_configs_exist():
    names = {p.name for p in all_yaml()}
    assert {"forecast-train.yaml", "text-train.yaml"} <= names


def test_all_problems_reported_at_once_with_allowed_values():
    with pytest.raises(ConfigError) as e:
        job_from_dict({"model": {"cell": "transformer", "hidden": 0, "bogus": 1},
                       "train": {"lr": "fast", "epochs": 2.5}, "color": "red"})
    msg = str(e.value)
    assert len(e.value.problems) == 6, msg
    assert "model.cell: 'transformer' is not allowed; choose one of rnn, lstm, gru" in msg
    assert "model.hidden: 0 is out of range; must be >= 1" in msg
    assert "model.bogus: unknown key; allowed keys in model: cell, hidden" in msg
    assert "train.lr: expected a number, got 'fast'" in msg
    assert "train.epochs: expected an integer, got 2.5" in msg
    assert "color: unknown key" in msg


def test_task_selects_the_data_section():
    cfg = job_from_dict({"task": "text", "data": {"seq_len": 50}})
    assert isinstance(cfg.data, TextDataConfig) and cfg.data.seq_len == 50
    with pytest.raises(ConfigError, match=r"data.window: unknown key; allowed keys in data: path"):
        job_from_dict({"task": "text", "data": {"window": 5}})
    with pytest.raises(ConfigError, match="task: 'speech' is not allowed; choose one of forecast, text"):
        job_from_dict({"task": "speech"})


def test_cross_field_checks():
    with pytest.raises(ConfigError) as e:
        job_from_dict({"data": {"quantiles": [0.9, 0.1], "val_start": "2017-13-01", "val_frac": 0.5,
                                "test_frac": 0.45}})
    msg = str(e.value)
    assert "data.quantiles" in msg and "increasing" in msg
    assert "data.val_start: '2017-13-01' is not a date" in msg
    assert "leaves too little for training" in msg
    with pytest.raises(ConfigError, match="must include 0.5"):
        job_from_dict({"data": {"quantiles": [0.1, 0.9]}})
    assert job_from_dict({"data": {"quantiles": []}}).data.quantiles == ()
    with pytest.raises(ConfigError, match="model.head: scale spreads quantiles around a location"):
        job_from_dict({"model": {"head": "scale"}, "data": {"quantiles": []}})
    with pytest.raises(ConfigError, match="data.point_shrink: drift keeps the model's band"):
        job_from_dict({"data": {"quantiles": [], "point_shrink": "drift"}})


def test_dotted_overrides_are_typed_as_yaml():
    raw = apply_overrides({"model": {"cell": "lstm"}}, ["model.cell=gru", "train.epochs=2",
                                                        "data.quantiles=[0.2, 0.5, 0.8]", "storage=/tmp/x"])
    cfg = job_from_dict(raw)
    assert cfg.model.cell == "gru" and cfg.train.epochs == 2 and cfg.storage == "/tmp/x"
    assert cfg.data.quantiles == (0.2, 0.5, 0.8)
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["model.cell"])
    # `off` unquoted is false to YAML 1.1: where a choice is named off, false means it
    assert job_from_dict(apply_overrides({}, ["data.point_shrink=off"])).data.point_shrink == "off"
    with pytest.raises(ConfigError, match="model.cell: false is not allowed; choose one of rnn, lstm, gru"):
        job_from_dict(apply_overrides({}, ["model.cell=off"]))  # no choice named off: still refused


def test_load_job_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses python tags
        load_job(evil)


def test_run_name_ignores_what_does_not_change_the_model():
    from jobs.train import run_name

    base = job_from_dict({"train": {"epochs": 2}})
    same = job_from_dict({"train": {"epochs": 2, "max_failures": 5, "keep_checkpoints": 4},
                          "scaling": {"workers": 4}, "storage": "s3://bkt/p"})
    other = job_from_dict({"train": {"epochs": 3}})
    data = {"sha256": "a" * 64}
    assert run_name(base, data) == run_name(same, data) != run_name(other, data)
    assert run_name(base, data) != run_name(base, {"sha256": "b" * 64})  # new data, new run
    assert run_name(base, data).startswith("forecast-lstm-")


def test_unquoted_yaml_dates_are_accepted_as_dates(tmp_path):
    p = tmp_path / "dated.yaml"
    p.write_text("task: forecast\ndata:\n  val_start: 2016-02-16\n")
    cfg = load_job(p, ["data.test_start=2017-02-10"])
    assert (cfg.data.val_start, cfg.data.test_start) == ("2016-02-16", "2017-02-10")
    assert section_from_dict(ScoreConfig, {"as_of": date(2018, 1, 31)}).as_of == "2018-01-31"


@pytest.mark.parametrize("job", ["train-forecast", "train-text", "score", "generate", "tune"])
def test_reference_is_the_defaults_as_valid_yaml(job):
    from rnnlib.config import GenerateConfig, reference, to_dict

    text = reference(job)
    raw = yaml.safe_load(text)
    assert all("#" in line for line in text.splitlines() if line.strip() and not line.startswith("#")
               and ":" in line and not line.strip().startswith("model.cell"))  # every key says what it is
    if job.startswith("train"):
        assert to_dict(job_from_dict(raw)) == to_dict(job_from_dict({"task": job.split("-")[1]}))
    elif job == "score":
        assert to_dict(section_from_dict(ScoreConfig, raw)) == to_dict(ScoreConfig())
    elif job == "generate":
        assert to_dict(section_from_dict(GenerateConfig, raw)) == to_dict(GenerateConfig())
    else:
        assert set(raw) == {"search", "tune"} and raw["tune"]["num_samples"] >= 1
