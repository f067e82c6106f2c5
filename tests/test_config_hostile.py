"""Hostile config values (issue 14, items 8 and 9): every one is a user's mistake, so the real
CLI reports it before Ray starts, exit 2, naming the key and the value, never a traceback."""

import pytest

from jobs.cli import main
from rnnlib.config import ConfigError, ScoreConfig, job_from_dict, section_from_dict
from rnnlib.storage import uri_problem

TRAIN = "jobs/configs/forecast-train.yaml"
TEXT = "jobs/configs/text-train.yaml"
TUNE = "jobs/configs/forecast-tune.yaml"
SCORE = "jobs/configs/forecast-score.yaml"


@pytest.fixture
def rnnjobs(capsys, monkeypatch):
    """``rnnjobs ARGS`` in this process: (exit code, stdout + stderr). Reaching Ray fails the test."""
    def no_ray(*args, **kwargs):
        raise AssertionError("the job reached init_ray: validation let the config through")

    monkeypatch.setattr("jobs.ray_setup.init_ray", no_ray)

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))  # an unexpected exception propagates and fails the test
        out, err = capsys.readouterr()
        return code, out + err
    return run


def refused(rnnjobs, argv: tuple[str, ...], key: str, value: str) -> str:
    code, out = rnnjobs(*argv)
    assert code == 2, out
    assert "Traceback" not in out
    assert f"  - {key}: " in out, out  # the problem line starts with the key...
    assert value in out, out  # ...and shows the bad value
    return out


# item 8: values of the wrong type, NaN and infinity
@pytest.mark.parametrize("override, key, value", [
    ("data.quantiles=0.5", "data.quantiles", "got 0.5"),
    ("data.val_frac=abc", "data.val_frac", "got 'abc'"),
    ("data.test_frac=[0.1]", "data.test_frac", "got [0.1]"),
    ("data.val_start=2017-13-45", "data.val_start", "'2017-13-45' is not a date; use YYYY-MM-DD"),
    ("task=[x]", "task", "[x] is not allowed; choose one of forecast, text"),
    ("train.lr=.nan", "train.lr", "expected a finite number, got .nan"),
    ("data.max_jump=.nan", "data.max_jump", "expected a finite number, got .nan"),
    ("data.quantiles=[0.1, .nan, 0.9]", "data.quantiles[1]", "got .nan"),
    ("scaling.cpus_per_worker=.inf", "scaling.cpus_per_worker", "expected a finite number, got .inf"),
])
def test_check_refuses_wrong_types_and_nan(rnnjobs, override, key, value):
    refused(rnnjobs, ("check", TRAIN, override), key, value)


@pytest.mark.parametrize("argv, key, value", [
    (("train", TRAIN, "data.val_frac=abc"), "data.val_frac", "'abc'"),
    (("train", TRAIN, "train.lr=.nan"), "train.lr", ".nan"),
    (("tune", TUNE, "task=[x]"), "task", "[x]"),
    (("tune", TUNE, "data.max_jump=.nan"), "data.max_jump", ".nan"),
    (("score", SCORE, "model=/nowhere/model", "as_of=2017-13-45"), "as_of", "'2017-13-45' is not a date"),
])
def test_jobs_refuse_wrong_types_before_ray(rnnjobs, argv, key, value):
    refused(rnnjobs, argv, key, value)


def test_an_impossible_date_in_a_yaml_file_names_its_key(rnnjobs, tmp_path):
    cfg = tmp_path / "dated.yaml"
    cfg.write_text("# a date that is no date\ntask: forecast\ndata:\n  test_start: 2017-02-30\n")
    refused(rnnjobs, ("check", str(cfg)), "data.test_start", "'2017-02-30' is not a date")


def test_a_scalar_value_is_shown_without_a_yaml_end_marker(rnnjobs):
    out = refused(rnnjobs, ("check", TRAIN, "train.epochs=2.5"), "train.epochs", "got 2.5")
    assert "\n...\n" not in out and not out.rstrip().endswith("...")


def test_a_long_problem_list_is_capped(rnnjobs, tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text("# 5000 bad features\ntask: forecast\ndata:\n  features: [" + ", ".join(["vol"] * 5000) + "]\n")
    code, out = rnnjobs("check", str(cfg))
    assert code == 2 and "Traceback" not in out
    assert "5000 problem(s)" in out and "... and 4980 more" in out
    assert out.count("\n  - ") == ConfigError.SHOWN
    assert "  - data.features[0]: 'vol' is not allowed" in out


def test_a_huge_value_is_shown_short(rnnjobs):
    out = refused(rnnjobs, ("check", TRAIN, f"data.val_frac=[{', '.join(['1'] * 10000)}]"), "data.val_frac",
                  "... (10000 items)")
    assert len(out) < 500


# item 9: locations and names
@pytest.mark.parametrize("override, key, value", [
    ("storage=s3://ab", "storage", "invalid bucket name 'ab'"),
    ("storage=s3://", "storage", "'s3://' has no bucket"),
    ("storage=ftp://host/x", "storage", "'ftp://host/x' uses ftp://"),
    ("storage=s3://My_Bucket/runs", "storage", "invalid bucket name 'My_Bucket'"),
    ("storage=file://relative/x", "storage", "'file://relative/x' is not an absolute file:// URI"),
    ("name=../../x", "name", "'../../x' is not a single folder name"),
    ("name=a/b", "name", "'a/b' is not a single folder name"),
    ("name=", "name", "'' is not a single folder name"),
    ("data.path=gs://bucket/histories", "data.path", "uses gs://"),
])
def test_check_refuses_bad_locations_and_names(rnnjobs, override, key, value):
    refused(rnnjobs, ("check", TRAIN, override), key, value)


@pytest.mark.parametrize("argv, key, value", [
    (("train", TRAIN, "storage=ftp://host/x"), "storage", "ftp://"),
    (("train", TEXT, "name=../../x"), "name", "'../../x'"),
    (("tune", TUNE, "storage=s3://ab"), "storage", "'ab'"),
    (("tune", TUNE, "tune.name=../../x"), "tune.name", "'../../x'"),
    (("score", SCORE, "model=/nowhere/model", "output=s3://ab"), "output", "'ab'"),
    (("score", SCORE, "model=/nowhere/model", "output=ftp://host/x"), "output", "ftp://"),
    (("score", SCORE, "model=s3://"), "model", "'s3://' has no bucket"),
    (("generate", "--model", "ftp://host/model"), "model", "ftp://"),
])
def test_jobs_refuse_bad_locations_before_ray(rnnjobs, argv, key, value):
    refused(rnnjobs, argv, key, value)


def test_every_problem_is_reported_together(rnnjobs):
    code, out = rnnjobs("check", TRAIN, "storage=s3://ab", "name=../x", "train.lr=.nan", "data.val_frac=abc")
    assert code == 2 and "4 problem(s)" in out
    for key in ("storage", "name", "train.lr", "data.val_frac"):
        assert f"  - {key}: " in out


@pytest.mark.parametrize("uri", ["outputs/runs", "/abs/runs", "~/runs", "file:///abs/runs", "file://localhost/x",
                                 "s3://my-bucket", "s3://my-bucket/runs/", "s3://a.b-c.123/p/q", "s3://abc"])
def test_good_locations_pass(uri):
    assert uri_problem(uri) is None
    assert job_from_dict({"storage": uri, "name": "my-run.v2"}).storage == uri
    assert section_from_dict(ScoreConfig, {"output": uri, "model": uri, "input": uri}).output == uri


@pytest.mark.parametrize("uri", ["", " ", "s3://", "s3:///x", "s3://ab", "s3://-abc", "s3://abc-", "s3://ABC",
                                 "s3://a_b_c", "s3://" + "a" * 64, "S3://bucket", "gs://bucket", "http://host/x",
                                 "file://", "file://host/x"])
def test_bad_locations_are_refused(uri):
    assert uri_problem(uri)
    with pytest.raises(ConfigError, match="storage: "):
        job_from_dict({"storage": uri})


def test_a_tagged_scalar_that_does_not_convert_is_a_config_error(rnnjobs, tmp_path):
    cfg = tmp_path / "tagged.yaml"
    cfg.write_text("# an explicit tag on a bad scalar\ntrain:\n  lr: !!float abc\n")
    code, out = rnnjobs("check", str(cfg))
    assert code == 2 and "not valid YAML" in out and "Traceback" not in out
    refused(rnnjobs, ("check", TRAIN, "train.lr=!!float abc"), "train.lr", "got '!!float abc'")
