
import pytest
from conftest import FIXTURES, absent
from jobhelpers import cli_run


def rnnjobs(*args):
    return cli_run(*args)  # in this process: these commands start no Ray


def test_bad_config_exits_2_without_traceback(tmp_path):
    r = rnnjobs("check", "jobs/configs/forecast-train.yaml", "model.cell=transformer", "train.bogus=1")
    assert r.returncode == 2
    assert "model.cell: 'transformer' is not allowed; choose one of rnn, lstm, gru" in r.stderr
    assert "train.bogus: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_exits_2():
    r = rnnjobs("check", "jobs/configs/forecast-train.yaml", "data.path=/nonexistent/histories")
    assert r.returncode == 2 and "/nonexistent/histories: no such file or folder" in r.stderr
    r = rnnjobs("check", "jobs/configs/text-train.yaml", f"data.path={FIXTURES}/missing.txt")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_check_prints_data_summary():
    r = rnnjobs("check", "jobs/configs/forecast-train.yaml", f"data.path={FIXTURES}/stocks_bad",
                "data.window=10")
    assert r.returncode == 0, r.stderr
    assert "3 series kept" in r.stdout and "mostly invalid" in r.stdout


def test_help_lists_commands():
    r = rnnjobs("--help")
    assert r.returncode == 0
    for command in ("check", "train", "tune", "score", "verify", "generate", "evaluate", "report", "submit", "jobs",
                    "config", "demo", "models", "scorecard"):
        assert f"    {command}" in r.stdout, command


def test_a_missing_test_input_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        absent("something is absent")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        absent("something is absent")
