"""``rnnjobs submit`` and ``rnnjobs jobs``: run the same jobs on a Ray cluster via its Job API.

submit: check the config here -> a deterministic submission id from the command and the resolved
config -> ``JobSubmissionClient.submit_job`` with an allowlisted copy of this project as the
``working_dir`` (``upload_set``: the packages, the config named and ``--include`` paths; never
secrets such as ``.env`` or keys) -> stream the logs and exit with the job's result. Submitting
the same thing again reports the job that exists (or, if that one failed or was stopped, submits
the next attempt, which resumes by name).

Exit codes: 0 succeeded, 1 failed, 130 stopped, 2 bad input (config, id), 3 cluster unreachable.
Token authentication (``RAY_AUTH_MODE=token``): Ray's client sends ``RAY_AUTH_TOKEN`` (or the
file at ``RAY_AUTH_TOKEN_PATH``, default ``~/.ray/auth_token``) with every request.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from jobs.ray_setup import RAY_ENV
from rnnlib.config import to_dict
from rnnlib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "tune", "score", "generate")
# The working_dir is an allowlist, staged into a temporary folder: what a job needs (the packages,
# with the bundled sample under rnnlib/datasets/, and the project's metadata), the config the
# command names and what the user adds with --include. Nothing else in the project folder goes up.
UPLOAD = ("rnnlib", "jobs", "pyproject.toml", "constraints.txt")
# Never uploaded, wherever they sit (inside an allowed folder or an --include): secrets. Matched
# against every part of a path.
SECRETS = (".env", ".env.*", "*.env", ".aws", ".ray", ".ssh", ".gnupg", ".docker", ".kube", ".netrc", "_netrc",
           ".pgpass", ".git-credentials", ".pypirc", ".npmrc", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
           "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "credentials", "*credentials*.json",
           "service-account*.json", "auth_token", "*.token", "kubeconfig", "*.kubeconfig")
# Left behind inside an uploaded folder: history, environments, outputs and caches.
CLUTTER = (".git", ".venv", "venv", "outputs", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
           "*.egg-info", ".ipynb_checkpoints", ".DS_Store")
EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
UNREACHABLE = 3


class Unreachable(UserError):
    """The cluster's Job API did not answer."""


def resolved_config(command: str, config: str, overrides: list[str]) -> dict:
    """Validate the config here, as the job will (exit 2 on a mistake); return it as plain data."""
    if command == "train":
        from rnnlib.config import load_job

        return to_dict(load_job(config, overrides))
    if command == "tune":
        from rnnlib.search import load_search

        s = load_search(config, overrides)
        return {"job": s.base, "search": s.search_raw, "tune": to_dict(s.settings)}
    if command == "score":
        from jobs.score import load_score_config

        return to_dict(load_score_config(config, overrides))
    from jobs.generate import load_generate_config

    return to_dict(load_generate_config(config, overrides, {}))


def submission_id(command: str, resolved: dict) -> str:
    """Deterministic: the same command and resolved config give the same id."""
    blob = json.dumps({"command": command, "config": resolved}, sort_keys=True, default=str)
    return f"rnnjobs-{command}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _matches(parts: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in parts for pat in patterns)


def _inside(path: str, root: Path, what: str) -> str:
    """``path`` relative to ``root`` (posix), or a ``UserError``: only the project folder can go up."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UserError(f"{path}: {what} must be inside the project folder {root} (the job runs in an uploaded "
                        "copy of it); copy it there, or read data from the object store") from None


def upload_set(config: str | None, includes: Sequence[str] = (), root: Path | None = None) -> list[str]:
    """The files (paths relative to ``root``) that go up as the job's working_dir, sorted.

    The allowlist ``UPLOAD``, the ``config`` file and each ``includes`` file or folder; inside a
    folder, ``CLUTTER`` and symbolic links stay behind, and ``SECRETS`` never go up, even when named."""
    root = Path(root or ROOT)
    named: list[tuple[str, str]] = [(p, "allowlist") for p in UPLOAD if (root / p).exists()]
    if config:
        named.append((_inside(config, root, "a submitted config"), "config"))
    named += [(_inside(p, root, "--include"), "--include") for p in includes]
    files: set[str] = set()
    for rel, why in named:
        path = root / rel
        if rel == "." or _matches(rel.split("/"), SECRETS):
            raise UserError(f"{rel if rel != '.' else root}: not uploaded ({why}): it is the whole project or "
                            "looks like a secret (.env, keys, tokens, credentials); name the files the job needs")
        if path.is_file():
            files.add(rel)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):  # does not follow symbolic links
                sub = Path(dirpath).relative_to(path).parts
                dirnames[:] = sorted(d for d in dirnames if not _matches([d], SECRETS + CLUTTER)
                                     and not os.path.islink(os.path.join(dirpath, d)))
                for f in filenames:
                    if not _matches([*sub, f], SECRETS + CLUTTER) and not os.path.islink(os.path.join(dirpath, f)):
                        files.add(Path(rel, *sub, f).as_posix())
        else:
            raise UserError(f"{rel}: no such file or folder ({why})")
    return sorted(files)


def stage(files: Sequence[str], dest: Path, root: Path | None = None) -> Path:
    """Copy ``files`` (relative to ``root``) into ``dest``, the folder Ray packs as the working_dir."""
    root = Path(root or ROOT)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return dest


def describe_upload(files: Sequence[str], root: Path | None = None) -> str:
    """``71 files, 2.94 MB: constraints.txt, jobs/ (19), pyproject.toml, rnnlib/ (50)``."""
    root = Path(root or ROOT)
    size = sum((root / f).stat().st_size for f in files)
    tops = Counter(f.split("/")[0] + ("/" if "/" in f else "") for f in files)
    return f"{len(files)} files, {size / 1e6:.2f} MB: " + ", ".join(
        f"{top} ({n})" if top.endswith("/") else top for top, n in sorted(tops.items()))


def entrypoint(command: str, config: str, overrides: list[str]) -> str:
    """``python -m jobs.cli ...`` with the config's path inside the project (the working_dir)."""
    rel = _inside(config, ROOT, "a submitted config")
    return " ".join(shlex.quote(a) for a in ["python", "-m", "jobs.cli", command, rel, *overrides])


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(f"the cluster at {address} refused the request: it uses token authentication. Set "
                        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token "
                        "(see cluster/README.md)") from None
    except ConnectionError as e:
        raise Unreachable(f"cannot reach the Ray Job API at {address}: {str(e).splitlines()[0]}\n(is the "
                          "head running and its dashboard port, 8265 by default, forwarded to you?)") from None


def _info(c, job_id: str):
    try:
        return c.get_job_info(job_id)
    except RuntimeError as e:  # the Job API answers 404 as a RuntimeError
        if "does not exist" in str(e) or "404" in str(e):
            return None
        raise


def follow(c, job_id: str) -> int:
    """Stream the job's logs until it ends; return its exit code (0, 1 or 130)."""
    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. `rnnjobs jobs logs {job_id}` to follow again, "
              f"`rnnjobs jobs stop {job_id}` to stop it")
        return 130
    status = wait_terminal(c, job_id, timeout=30)
    print(f"job {job_id}: {status}")
    return EXIT.get(status, 1)


def wait_terminal(c, job_id: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in EXIT or time.monotonic() > end:
            return status
        time.sleep(0.5)


# Where each command reads its inputs, as dotted keys of the resolved config.
INPUT_KEYS = {"train": ("data.path",), "tune": ("job.data.path",), "score": ("input", "model"),
              "generate": ("model",)}


def check_inputs_reachable(command: str, resolved: dict, address: str | None,
                           files: Sequence[str] | None = None) -> None:
    """A local input path is readable by a cluster on this machine only, or when it lies inside
    the uploaded working_dir (``files``, default the allowlist; given relative to it). Say so
    before submitting (exit 2)."""
    host = urlparse(address or os.environ.get("RAY_ADDRESS") or "").hostname or ""
    local_cluster = host in ("localhost", "::1") or host.startswith("127.")
    files = upload_set(None) if files is None else files
    for key in INPUT_KEYS[command]:
        value = resolved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not value or "://" in str(value) and not str(value).startswith("file://"):
            continue
        rel = Path(str(value).removeprefix("file://"))
        if rel.is_absolute() and local_cluster:
            continue
        name = os.path.normpath(rel).replace(os.sep, "/")
        if not rel.is_absolute() and any(f == name or f.startswith(name + "/") for f in files):
            continue
        include = "" if rel.is_absolute() else (f"upload it with `--include {value}` (small files only), "
                                                 + ("give its absolute path, " if local_cluster else "") + "or ")
        raise UserError(f"{key}={value}: a local path, which the cluster at {address or 'RAY_ADDRESS'} cannot read "
                        f"(the job runs in an uploaded copy of {', '.join(UPLOAD)} and what --include names); "
                        f"{include}copy it to the object store, e.g. `aws s3 sync {value} s3://BUCKET/PREFIX/`, and "
                        f"pass {key.removeprefix('job.')}=s3://BUCKET/PREFIX/")


def job_env() -> dict[str, str]:
    """Environment of a submitted job: RAY_ENV, and the model registry this shell uses (RNNJOBS_REGISTRY,
    a URI without credentials: refused otherwise), so a models:// reference resolves there as it does here."""
    from rnnlib.registry import ENV, registry_uri

    return {**RAY_ENV, **({ENV: registry_uri()} if os.environ.get(ENV) else {})}


def submit(address: str | None, command: str, config: str, overrides: list[str], wait: bool,
           includes: Sequence[str] = ()) -> int:
    resolved = resolved_config(command, config, overrides)
    if command == "score" and resolved.get("as_of"):  # `as_of=today`, resolved here: the id and the job agree
        overrides = [o for o in overrides if not o.startswith("as_of=")] + [f"as_of={resolved['as_of']}"]
    files = upload_set(config, includes)
    check_inputs_reachable(command, resolved, address, files)
    base_id = submission_id(command, resolved)
    entry = entrypoint(command, config, overrides)
    c = client(address)
    job_id, attempt = base_id, 1
    while (info := _info(c, job_id)) is not None:
        status = str(info.status.value)
        if status not in ("FAILED", "STOPPED"):
            print(f"already submitted: {job_id} is {status} (same command and config); not submitting again")
            return follow(c, job_id) if wait else (0 if status != "FAILED" else 1)
        attempt += 1
        job_id = f"{base_id}-{attempt}"
    print(f"working_dir: {describe_upload(files)}", flush=True)
    logging.getLogger("ray").setLevel(logging.WARNING)  # one INFO line per file while packaging
    end = time.monotonic() + 120
    with tempfile.TemporaryDirectory(prefix="rnnjobs-upload-") as tmp:  # Ray packs and uploads it in submit_job
        runtime_env = {"working_dir": str(stage(files, Path(tmp))), "env_vars": job_env()}
        while True:
            try:
                c.submit_job(entrypoint=entry, submission_id=job_id, runtime_env=runtime_env,
                             metadata={"rnnjobs_command": command, "rnnjobs_config": Path(config).name})
                break
            except RuntimeError as e:  # a head that just started has no job agent yet
                if "No available agent" not in str(e) or time.monotonic() > end:
                    raise
                print("the cluster has no job agent ready yet; retrying", flush=True)
                time.sleep(3)
    again = f" (attempt {attempt}: the earlier one failed or was stopped; it resumes by name)" if attempt > 1 else ""
    print(f"submitted {job_id}{again}\n  entrypoint: {entry}")
    if not wait:
        print(job_id)
        return 0
    return follow(c, job_id)


def jobs(address: str | None, action: str, job_id: str | None, follow_logs: bool = False) -> int:
    from rnnlib.tables import table

    c = client(address)
    if action == "list":
        rows = [[j.submission_id or j.job_id, j.status.value, _when(j.start_time), _when(j.end_time),
                 (j.entrypoint or "")[:60]] for j in sorted(c.list_jobs(), key=lambda j: j.start_time or 0)]
        print(table(rows, ["id", "status", "started", "ended", "entrypoint"]) if rows else "no jobs")
        return 0
    if not job_id:
        raise UserError(f"jobs {action}: pass the job id (see `rnnjobs jobs list`)")
    info = _info(c, job_id)
    if info is None:
        raise UserError(f"no job {job_id!r} on this cluster (see `rnnjobs jobs list`)")
    if action == "status":
        print(f"{job_id}: {info.status.value}\n  entrypoint: {info.entrypoint}\n  started: {_when(info.start_time)}"
              f"  ended: {_when(info.end_time)}" + (f"\n  message: {info.message}" if info.message else ""))
        return 0
    if action == "logs":
        if follow_logs:
            return follow(c, job_id)
        print(c.get_job_logs(job_id), end="")
        return 0
    c.stop_job(job_id)  # stop
    status = wait_terminal(c, job_id, timeout=60)
    print(f"job {job_id}: {status}")
    return 0 if status in EXIT else 1


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
