"""Credentials never ride in a URI: every entry refuses one (exit 2, no traceback, the key named,
the secret never echoed), and ``storage.redact`` hides user info in anything printed."""

import subprocess

import pytest
from jobhelpers import cli_run

from rnnlib import storage
from rnnlib.config import job_from_dict
from rnnlib.errors import ConfigError, UserError

KEY_ID, SECRET = "AKIAEXAMPLEKEYID", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY"  # AWS secrets may hold '/'
S3 = f"s3://{KEY_ID}:{SECRET}@bucket/prefix"
HTTP = f"https://{KEY_ID}:{SECRET}@minio.example:9000"


def rnnjobs(*args):
    return cli_run(*args)  # in this process: these commands start no Ray


def assert_refused(r: subprocess.CompletedProcess, keys: list[str]) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert SECRET not in out and KEY_ID not in out and SECRET.split("/")[1] not in out
    assert "AWS chain" in r.stderr or "RAY_AUTH_TOKEN" in r.stderr
    for key in keys:
        assert f"{key}: " in r.stderr and "has credentials in it" in r.stderr, (key, r.stderr)


# Every config key that takes a URI, per command: all refused in one run (problems are collected).
CONFIG_CASES = {
    "check": (["jobs/configs/forecast-train.yaml", f"storage={S3}", f"data.path={S3}", f"endpoint_url={HTTP}"],
              ["storage", "data.path", "endpoint_url"]),
    "train": (["jobs/configs/text-train.yaml", f"storage={S3}", f"data.path={S3}/corpus.txt"],
              ["storage", "data.path"]),
    "tune": (["jobs/configs/forecast-tune.yaml", f"search.data.path={{choice: [{S3}]}}"],  # each value a trial gets
             ["search.data.path = 's3://***@bucket/prefix': data.path"]),
    "score": (["jobs/configs/forecast-score.yaml", f"input={S3}", f"model={S3}/model", f"output={S3}/out",
               f"endpoint_url={HTTP}"], ["input", "model", "output", "endpoint_url"]),
    "generate": ([f"model={S3}", f"out={S3}/sample.txt", f"endpoint_url={HTTP}"], ["model", "out", "endpoint_url"]),
}


@pytest.mark.parametrize("command", list(CONFIG_CASES))
def test_config_keys_with_credentials_are_refused(command):
    args, keys = CONFIG_CASES[command]
    assert_refused(rnnjobs(command, *args), keys)


def test_submit_refuses_before_contacting_the_cluster():
    # port 9 (discard): nothing answers there, so a refusal that came later would exit 3, not 2
    r = rnnjobs("submit", "--address", "http://127.0.0.1:9", "score", "jobs/configs/forecast-score.yaml",
                f"output={S3}")
    assert_refused(r, ["output"])
    assert "entrypoint" not in r.stdout
    r = rnnjobs("submit", "--address", f"http://ray:{SECRET}@127.0.0.1:9", "train", "jobs/configs/forecast-train.yaml")
    assert_refused(r, ["--address"])


FLAG_CASES = [
    (["verify", f"{S3}/run=abc"], "run"),
    (["evaluate", "--model", S3], "--model"),
    (["evaluate", "--model", "outputs/none", "--text", f"{S3}/t.txt"], "--text"),
    (["generate", "--model", S3, "--prompt", "ROMEO:"], "--model"),
    (["generate", "--model", "outputs/none", "--out", f"{S3}/s.txt"], "--out"),
    (["report", f"{S3}/run", "--out", "/tmp/r"], "runs"),
    (["scorecard", S3, "--histories", "/tmp/h"], "output"),
    (["scorecard", "/tmp/o", "--histories", f"{S3}/h", "--out", "/tmp/c"], "--histories"),
    (["scorecard", "/tmp/o", "--histories", "/tmp/h", "--out", f"{S3}/c"], "--out"),
    (["verify", "s3://bucket/run=abc", "--endpoint-url", HTTP], "--endpoint-url"),
]


@pytest.mark.parametrize("args,key", FLAG_CASES, ids=[" ".join(a[:2])[:30] + " " + k for a, k in FLAG_CASES])
def test_flags_with_credentials_are_refused(args, key):
    assert_refused(rnnjobs(*args), [key])


def test_endpoint_from_the_environment_is_refused(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", HTTP)
    with pytest.raises(UserError, match="AWS_ENDPOINT_URL_S3") as e:
        storage.filesystem("s3://bucket/prefix")
    assert SECRET not in str(e.value) and "AWS chain" in str(e.value)


def test_storage_refuses_credentials_before_any_io(tmp_path):
    # the last guard, behind config validation: a library caller or an old bundle's data.path
    for call in (lambda: storage.filesystem(S3), lambda: storage.read_bytes(S3 + "/x.json"),
                 lambda: storage.write_bytes(S3 + "/x.json", b"{}"), lambda: storage.exists(S3),
                 lambda: storage.list_files(S3), lambda: storage.create_if_absent(S3 + "/_SUCCESS", b""),
                 lambda: storage.upload_dir(tmp_path, S3)):
        with pytest.raises(UserError, match="has credentials in it") as e:
            call()
        assert SECRET not in str(e.value) and KEY_ID not in str(e.value)


def test_library_config_names_every_key_and_never_the_secret():
    with pytest.raises(ConfigError) as e:
        job_from_dict({"storage": S3, "endpoint_url": HTTP, "data": {"path": S3}})
    assert [p.split(":")[0] for p in e.value.problems] == ["storage", "endpoint_url", "data.path"]
    assert SECRET not in str(e.value) and KEY_ID not in str(e.value)
    job_from_dict({"storage": "s3://bucket/runs", "endpoint_url": "http://127.0.0.1:9000",
                   "data": {"path": "s3://bucket/user@example.com/histories/"}})  # '@' in a key is fine


def test_access_errors_are_redacted():
    msg = storage.access_error(S3, OSError("AWS Error ACCESS_DENIED during HeadObject"))
    assert "access denied" in msg and msg.startswith("s3://***@bucket/prefix") and SECRET not in msg


@pytest.mark.parametrize("uri,expected", [
    ("s3://KEY:SECRET@bucket/p", "s3://***@bucket/p"),
    ("s3://KEY@bucket/p", "s3://***@bucket/p"),
    ("s3://:SECRET@bucket/p", "s3://***@bucket/p"),
    (S3 + "/a@b.csv", "s3://***@bucket/prefix/a@b.csv"),  # a '/' in the secret; an '@' in the key stays
    (f"s3://{KEY_ID}:{SECRET}", "s3://***"),  # no '@' at all: hide the whole rest
    (HTTP + "/path", "https://***@minio.example:9000/path"),
    ("http://u:p@[::1]:9000", "http://***@[::1]:9000"),
    ("error: s3://K:S@b/p: not found; also 'https://a:b@h/x'", "error: s3://***@b/p: not found; also 'https://***@h/x'"),
    # nothing to hide
    ("s3://bucket/prefix/", "s3://bucket/prefix/"),
    ("s3://bucket/user@example.com/f.csv", "s3://bucket/user@example.com/f.csv"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("http://[::1]:9000/x", "http://[::1]:9000/x"),
    ("https://minio.example/", "https://minio.example/"),
    ("file:///tmp/runs", "file:///tmp/runs"),
    ("/home/me/user@host:runs", "/home/me/user@host:runs"),
    ("outputs/runs", "outputs/runs"),
    ("", ""),
])
def test_redact(uri, expected):
    assert storage.redact(uri) == expected
    if " " not in uri:  # a URI, not a message holding some
        assert storage.has_credentials(uri) == (expected != uri)
