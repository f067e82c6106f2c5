"""What `rnnjobs submit` uploads as the job's working_dir: an allowlist, staged into a temporary
folder. Secrets and stray outputs never go up; what the job needs does. No Ray cluster is started:
the upload set, the staged folder, Ray's own zip of it and submit() with a stand-in client."""

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from jobs import submit as sub
from rnnlib.errors import UserError

CANARY = "CANARY-SECRET-0123456789"
CONFIG = "jobs/configs/forecast-train.yaml"
# Secrets at the project's top level and inside the folders that do go up, and stray outputs.
SECRETS = [".env", ".env.local", ".aws/credentials", ".aws/config", ".ray/auth_token", ".netrc", "id_rsa",
           "id_ed25519.pub", "server.pem", "keys/deploy.pem", "credentials.json", ".ssh/id_rsa",
           "jobs/.env", "jobs/configs/id_rsa", "rnnlib/credentials.json", "rnnlib/datasets/.env.local",
           "jobs/configs/tls.key", "data/small/.env", "data/small/gcp-credentials.json"]
STRAY = ["runs/forecast-lstm/model/weights.pt", "my-outputs/forecasts.parquet", "outputs/report/report.md",
         "jobs/outputs/run/metrics.json", "rnnlib/__pycache__/models.cpython-311.pyc", ".git/config",
         ".venv/bin/python", "tests/test_x.py", "bench/results/x.json", "notebooks/tutorial.ipynb", "data/big/all.csv"]
NEEDED = ["rnnlib/__init__.py", "rnnlib/models.py", "rnnlib/datasets/stocks/AAPL_data.csv", "jobs/__init__.py",
          "jobs/cli.py", CONFIG, "jobs/configs/forecast-score.yaml", "pyproject.toml", "constraints.txt"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder, the working directory, holding what a job needs, secrets (each file holds
    CANARY) and stray outputs."""
    root = tmp_path / "project"
    for rel in NEEDED + STRAY + ["data/small/h.csv"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{rel}\n")
    shutil.copy(ROOT / CONFIG, root / CONFIG)  # a real config, for submit()
    for rel in SECRETS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{CANARY}\n")
    monkeypatch.chdir(root)  # relative paths on the command line are relative to it
    return root


def test_secrets_and_stray_outputs_never_reach_the_upload(project, tmp_path):
    files = sub.upload_set(str(project / CONFIG), ["data/small"], root=project)
    assert set(NEEDED) | {"data/small/h.csv"} == set(files)
    staged = sub.stage(files, tmp_path / "staged", root=project)
    on_disk = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert on_disk == files
    assert all(CANARY not in p.read_text() for p in staged.rglob("*") if p.is_file())
    assert sub.describe_upload(files, root=project).startswith(
        "10 files, 0.00 MB: constraints.txt, data/ (1), jobs/ (4), pyproject.toml, rnnlib/ (3)")


def test_rays_zip_of_the_staged_folder_holds_only_the_upload_set(project, tmp_path):
    # Ray's own packer (what JobSubmissionClient uploads), so nothing of Ray's (.gitignore rules,
    # hidden files) adds to or drops from the set
    from ray._private.runtime_env.packaging import create_package

    files = sub.upload_set(str(project / CONFIG), root=project)
    staged = sub.stage(files, tmp_path / "staged", root=project)
    create_package(str(staged), tmp_path / "wd.zip", include_gitignore=True)
    with zipfile.ZipFile(tmp_path / "wd.zip") as z:
        names = sorted(n for n in z.namelist() if not n.endswith("/"))
        assert names == files
        assert all(CANARY.encode() not in z.read(n) for n in names)


@pytest.mark.parametrize("named", [".env", ".aws/credentials", ".ray", "id_rsa", "server.pem", "credentials.json",
                                   "keys/deploy.pem", "."])
def test_naming_a_secret_or_the_whole_project_is_refused(project, named):
    with pytest.raises(UserError, match="not uploaded"):
        sub.upload_set(str(project / CONFIG), [str(project / named)], root=project)


def test_paths_outside_the_project_are_refused(project, tmp_path):
    (tmp_path / "elsewhere.yaml").write_text("task: forecast\n")
    with pytest.raises(UserError, match="must be inside the project folder"):
        sub.upload_set(str(tmp_path / "elsewhere.yaml"), root=project)
    with pytest.raises(UserError, match="must be inside the project folder"):
        sub.upload_set(str(project / CONFIG), [str(tmp_path)], root=project)
    with pytest.raises(UserError, match="no such file or folder"):
        sub.upload_set(str(project / CONFIG), [str(project / "data/missing")], root=project)


def test_a_named_config_outside_the_allowlist_goes_up_alone(project):
    best = project / "outputs/tune/exp/best.yaml"  # tune writes a train config here
    best.parent.mkdir(parents=True)
    best.write_text("task: forecast\n")
    files = sub.upload_set(str(best), root=project)
    assert "outputs/tune/exp/best.yaml" in files and "outputs/report/report.md" not in files


def test_symbolic_links_in_allowed_folders_stay_behind(project, tmp_path):
    (tmp_path / "outside-secret").write_text(CANARY)
    (project / "jobs/configs/innocent.yaml").symlink_to(tmp_path / "outside-secret")
    (project / "rnnlib/linked").symlink_to(tmp_path, target_is_directory=True)
    files = sub.upload_set(None, root=project)
    assert not any(f.startswith(("jobs/configs/innocent", "rnnlib/linked")) for f in files)


def test_the_real_project_uploads_every_tracked_package_file_and_nothing_else():
    tracked = subprocess.run(["git", "ls-files", "rnnlib", "jobs", "pyproject.toml", "constraints.txt"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = sub.upload_set(str(ROOT / CONFIG))
    assert set(tracked) <= set(files), set(tracked) - set(files)
    assert {f.split("/")[0] for f in files} == {"rnnlib", "jobs", "pyproject.toml", "constraints.txt"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


class FakeClient:
    """Stands in for JobSubmissionClient: records what submit_job would upload, while it exists."""

    def __init__(self):
        self.uploaded, self.kwargs = None, None

    def get_job_info(self, job_id):
        raise RuntimeError(f"Job {job_id} does not exist")

    def submit_job(self, **kwargs):
        wd = Path(kwargs["runtime_env"]["working_dir"])
        self.kwargs = kwargs
        self.uploaded = {p.relative_to(wd).as_posix(): p.read_text() for p in wd.rglob("*") if p.is_file()}


def test_submit_uploads_the_staged_allowlist_and_prints_it(project, monkeypatch, capsys):
    fake = FakeClient()
    monkeypatch.setattr(sub, "ROOT", project)
    monkeypatch.setattr(sub, "client", lambda address: fake)
    rc = sub.submit("http://ray-head.example:8265", "train", CONFIG, ["train.epochs=1"], wait=False,
                    includes=["data/small"])
    assert rc == 0
    assert set(fake.uploaded) == set(NEEDED) | {"data/small/h.csv"}
    assert not any(CANARY in text for text in fake.uploaded.values())
    assert "excludes" not in fake.kwargs["runtime_env"]
    assert not Path(fake.kwargs["runtime_env"]["working_dir"]).exists()  # the staged copy is removed after
    out = capsys.readouterr().out
    assert "working_dir: 10 files" in out and "jobs/ (4), pyproject.toml, rnnlib/ (3)" in out
    assert f"entrypoint: python -m jobs.cli train {CONFIG} train.epochs=1" in out


def test_relative_inputs_must_be_uploaded(project, monkeypatch):
    monkeypatch.setattr(sub, "ROOT", project)
    resolved = {"data": {"path": "data/small"}}
    for address in ("http://ray-head.example:8265", "http://127.0.0.1:8265"):  # a local cluster runs in a copy too
        with pytest.raises(UserError, match="--include data/small"):
            sub.check_inputs_reachable("train", resolved, address, sub.upload_set(None, root=project))
        sub.check_inputs_reachable("train", resolved, address, sub.upload_set(None, ["data/small"], root=project))
