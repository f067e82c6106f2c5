"""cluster/: the image pins the same Ray, the KubeRay manifests validate against the CRD schemas,
every entrypoint names a config that exists and that rnnjobs accepts, and the manifests name the
image by a commit placeholder that cluster/render.py fills in."""

import copy
import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, absent, optional

from jobs.submit import resolved_config

CLUSTER = ROOT / "cluster"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
IMAGE_ROOT = "/home/ray/rnnjobs/"  # where cluster/Dockerfile puts the project
PIN = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
PLACEHOLDER_IMAGE = f"REGISTRY/rnnjobs:ray-{PIN}-COMMIT"  # cluster/render.py fills in registry and commit


def manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted((CLUSTER / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(*kinds) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in manifests() if d["kind"] in kinds]


def walk(node, key: str):
    """Every value stored under ``key`` anywhere in a nested document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def test_dockerfile_uses_the_pinned_ray_for_python_311_with_cuda():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1) == PIN
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, re.M)
    assert "-c constraints.txt" in text
    from jobs.ray_setup import RAY_ENV  # every Ray process of the image gets it, as local and submitted jobs do

    env = dict(re.findall(r"(RAY_\w+)=(\S+)", text.split("\nENV ", 1)[1].split("\n\n", 1)[0]))
    assert env == RAY_ENV, env
    for src in re.findall(r"^COPY (?:--\S+ )*(.+?) \S+$", text, re.M):
        for name in src.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"
    # every extra a job config can ask for is in the image: a cluster cannot pip install mid-job. dev and bench
    # are for this repository's tests and benchmarks (bench: arch, for bench/baselines.py), never a job's
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    extras -= {"dev", "bench"}
    installed = re.search(r'pip install .* -e "\.\[([\w,]+)\]"', text).group(1).split(",")
    assert extras <= set(installed), f"the image lacks the extra(s) {extras - set(installed)}"


def test_every_manifest_parses_and_has_the_expected_kinds():
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds == sorted(["ServiceAccount", "RayCluster", "RayJob", "RayJob", "RayJob", "RayCronJob", "RayCronJob",
                            "CronJob", "CronJob"])


def _strict(schema):
    """CRD schemas prune unknown fields; we want a typo to fail, so forbid fields not declared."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


KUBERAY = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}


def _crd_file(kind: str) -> Path:
    return CRDS / f"ray.io_{KUBERAY[kind]}.yaml"


@functools.cache
def _crd_schema(kind: str) -> dict | None:
    if not _crd_file(kind).exists():
        return None
    crd = yaml.safe_load(_crd_file(kind).read_text())  # ~1 s each: read once per session
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def crd_errors(doc: dict) -> list[str]:
    """What the KubeRay CRD of ``doc``'s kind (made strict) finds wrong with it."""
    jsonschema = optional("jsonschema")
    schema = _crd_schema(doc["kind"])
    if schema is None:
        absent(f"{_crd_file(doc['kind'])} is absent")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("kind", list(KUBERAY))
def test_kuberay_resources_validate_against_the_crds(kind):
    docs = by_kind(kind)
    assert docs
    for path, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = crd_errors(doc)
        assert not errors, f"{path.name}: " + "; ".join(errors[:5])


def test_a_typo_fails_validation():
    (_, doc), *_ = by_kind("RayJob")
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(bad))


# The one shell expansion a manifest's command may use: the date in New York, in the weekly CronJob's
# data.end (cronjob-retrain.yaml says why). Tests stand a fixed date in for it.
SHELL_DATE = "$(TZ=America/New_York date +%F)"
_OPERATORS = set("();<>|&")


def commands(script: str, chain: bool = True, today: str = "2026-11-28") -> list[list[str]]:
    """The commands a shell runs for ``script``, each as its arguments, in order.

    ``bash -c '...'`` is unwrapped. Commands may be joined by ``&&`` (each runs after the one
    before succeeded) only where ``chain``: not at the top of a KubeRay entrypoint, which the
    submitter pod pastes into its own bash line (``ray job submit ... -- ENTRYPOINT ; fi``), so a
    bare ``a && b`` would run b in the submitter pod instead of the job. Any other shell operator
    or expansion is refused."""
    assert script.count("$") == script.count(SHELL_DATE), f"a shell expansion other than {SHELL_DATE}: {script!r}"
    lex = shlex.shlex(script.replace(SHELL_DATE, today), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    if tokens[:2] in (["bash", "-c"], ["/bin/bash", "-c"]):
        assert len(tokens) == 3, f"bash -c takes one quoted script: {script!r}"
        return commands(tokens[2], chain=True, today=today)
    out = [[]]
    for t in tokens:
        if t and set(t) <= _OPERATORS:
            assert t == "&&" and chain, (f"{t!r} in {script!r}: " + (
                "only && may join commands" if chain else "wrap a chain in bash -c '...', or KubeRay's submitter "
                "runs all but the first command in its own pod"))
            out.append([])
        else:
            out[-1].append(t)
    assert all(out), f"an empty command in {script!r}"
    return out


def manifest_commands() -> list[tuple[str, list[str]]]:
    """(manifest, arguments) of every command every manifest runs, in the order it runs them."""
    out = []
    for path, doc in by_kind("RayJob", "RayCronJob"):
        out += [(path.name, args) for e in walk(doc, "entrypoint") for args in commands(e, chain=False)]
    for path, doc in by_kind("CronJob"):
        for container in (c for cs in walk(doc, "containers") for c in cs):
            assert container["command"] == ["/bin/bash", "-c"] and len(container["args"]) == 1, path.name
            out += [(path.name, args) for args in commands(container["args"][0])]
    return out


def test_commands_splits_chains_and_refuses_what_kuberay_would_split():
    assert commands("bash -c 'rnnjobs score a.yaml as_of=today && rnnjobs scorecard s3://b/f --histories s3://b/h/'",
                    chain=False) == [["rnnjobs", "score", "a.yaml", "as_of=today"],
                                     ["rnnjobs", "scorecard", "s3://b/f", "--histories", "s3://b/h/"]]
    assert commands(f"rnnjobs train a.yaml data.end={SHELL_DATE}", today="2026-11-28") == [
        ["rnnjobs", "train", "a.yaml", "data.end=2026-11-28"]]
    for bad, chain in [("rnnjobs score a.yaml && rnnjobs scorecard b", False), ("rnnjobs score a; rnnjobs x", True),
                       ("rnnjobs score a || true", True), ("rnnjobs score $CONFIG", True)]:
        with pytest.raises(AssertionError):
            commands(bad, chain=chain)


def _rnnjobs(args: list[str]) -> list[str]:
    """``rnnjobs submit --address URL JOB ...`` as the ``rnnjobs JOB ...`` the cluster runs."""
    assert args[0] == "rnnjobs", args
    return ["rnnjobs", *args[args.index("submit") + 3:]] if args[1] == "submit" else args


def _local(config: str) -> Path:
    assert config.startswith(IMAGE_ROOT), f"{config} is not in the image's project folder"
    return ROOT / config[len(IMAGE_ROOT):]


@pytest.mark.parametrize("name, args", manifest_commands(), ids=lambda v: v if isinstance(v, str) else v[1])
def test_every_command_is_one_rnnjobs_accepts(name, args):
    args = _rnnjobs(args)
    if args[1] == "scorecard":
        from jobs.cli import build_parser

        parsed = build_parser().parse_args(args[1:])  # a bad flag exits 2 (SystemExit)
        assert parsed.output.startswith("s3://") and parsed.histories.startswith("s3://"), args
        return
    assert args[1] in ("train", "tune", "score", "generate"), args
    local = _local(args[2])
    assert local.is_file(), f"{name}: {local} does not exist"
    resolved_config(args[1], str(local), args[3:])  # raises ConfigError (exit 2) on a bad key or value


def _doc(name: str) -> dict:
    (doc,) = [d for p, d in manifests() if p.name == name]
    return doc


def job_env(name: str) -> dict:
    """The environment a manifest gives its rnnjobs commands beyond the image's: a RayJob's or a
    RayCronJob's runtime env, or a CronJob's container env (which `rnnjobs submit` passes on)."""
    doc = _doc(name)
    if doc["kind"] == "CronJob":
        return {e["name"]: e["value"] for cs in walk(doc, "containers") for c in cs for e in c["env"] if "value" in e}
    return {k: v for r in walk(doc, "runtimeEnvYAML") for k, v in yaml.safe_load(r)["env_vars"].items()}


@pytest.mark.parametrize("daily, weekly", [("raycronjob-score.yaml", "raycronjob-retrain.yaml"),
                                           ("cronjob-score.yaml", "cronjob-retrain.yaml")])
def test_the_daily_schedule_scores_the_champion_the_weekly_retrain_promotes_then_runs_the_scorecard(daily, weekly):
    from jobs.score import load_score_config
    from rnnlib.config import load_job

    (_, train), = [(n, _rnnjobs(a)) for n, a in manifest_commands() if n == weekly]
    assert train[1] == "train"
    job = load_job(_local(train[2]), train[3:])
    assert (job.release.model, job.release.alias) == ("forecaster", "champion")
    assert job.storage.startswith("s3://") and job.data.path.startswith("s3://")
    assert not job.scaling.gpu  # the weekly cluster (and the standing one's CPU group) has CPU workers only
    score, scorecard = (_rnnjobs(a) for n, a in manifest_commands() if n == daily)
    assert score[1] == "score" and "as_of=today" in score and scorecard[1] == "scorecard"
    cfg = load_score_config(_local(score[2]), score[3:])
    assert cfg.model == f"models://{job.release.model}@{job.release.alias}"
    # the registry the daily job resolves the reference in is the one the weekly job promotes in
    assert job_env(daily)["RNNJOBS_REGISTRY"] == job.release.registry == "s3://my-bucket/models"
    # the scorecard reads what the score step publishes, against the histories it scored (and trained on)
    assert scorecard[2] == cfg.output and scorecard[scorecard.index("--histories") + 1] == cfg.input == job.data.path
    for name in (daily, weekly):
        spec = _doc(name)["spec"]
        assert spec["timeZone"] == "America/New_York", name
    assert _doc(daily)["spec"]["schedule"] == "30 18 * * 1-5" and _doc(weekly)["spec"]["schedule"] == "0 6 * * 6"


def test_the_one_off_score_job_has_the_registry_its_config_needs():
    assert job_env("rayjob-score.yaml")["RNNJOBS_REGISTRY"] == "s3://my-bucket/models"


def _recorder(tmp_path: Path) -> tuple[dict, Path]:
    """Stand-ins for ``ray`` and ``rnnjobs`` on PATH that record their arguments, a call a line."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("ray", "rnnjobs"):
        (bin_dir / tool).write_text(f'#!/bin/bash\nprintf "%s\\037" {tool} "$@" >> "{calls}"; echo >> "{calls}"\n')
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def _calls(calls: Path) -> list[list[str]]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return [line.split("\x1f")[:-1] for line in lines]


@pytest.mark.parametrize("name", ["raycronjob-score.yaml", "raycronjob-retrain.yaml", "cronjob-score.yaml",
                                  "cronjob-retrain.yaml"])
def test_real_shells_run_the_commands_these_tests_check(name, tmp_path):
    """KubeRay's submitter pod runs ``/bin/bash -c "if ray job status ...; then ray job logs ...; else
    ray job submit ... -- ENTRYPOINT ; fi"``; ``ray job submit`` sends ``shlex.join`` of what follows
    ``--``; the head runs that with ``shell=True``. A CronJob's container runs its command and args."""
    if not shutil.which("bash"):
        absent("bash is not installed")
    env, calls = _recorder(tmp_path)
    doc = _doc(name)
    if doc["kind"] == "CronJob":
        (container,) = [c for cs in walk(doc, "containers") for c in cs]
        subprocess.run([*container["command"], *container["args"]], env=env, check=True, timeout=30)
    else:
        entry = next(walk(doc, "entrypoint"))
        submitter = f"if false ; then true ; else ray job submit --address http://h:8265 -- {entry} ; fi"
        subprocess.run(["/bin/bash", "-c", submitter], env=env, check=True, timeout=30)
        (ray,) = _calls(calls)  # the submitter ran nothing but `ray job submit`
        subprocess.run(shlex.join(ray[ray.index("--") + 1:]), shell=True, env=env, check=True, timeout=30)
    ran = _calls(calls)
    dates = {a.split("=", 1)[1] for c in ran for a in c if a.startswith("data.end=")}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dates), dates
    assert ran == [c for n, a in manifest_commands() if n == name
                   for c in [[x.replace("data.end=2026-11-28", f"data.end={min(dates, default='')}") for x in a]]]
    assert ran and all(c[0] == "rnnjobs" for c in ran)


def test_a_bare_chain_would_run_its_second_command_in_kuberays_submitter_pod(tmp_path):
    """Why the daily RayCronJob quotes its chain: unquoted, the submitter's bash splits it."""
    env, calls = _recorder(tmp_path)
    (script,) = [t for t in shlex.split(next(walk(_doc("raycronjob-score.yaml"), "entrypoint")))[2:]]
    submitter = f"if false ; then true ; else ray job submit --address http://h:8265 -- {script} ; fi"
    subprocess.run(["/bin/bash", "-c", submitter], env=env, check=True, timeout=30)
    ray, scorecard = _calls(calls)
    assert "scorecard" not in ray and scorecard[:2] == ["rnnjobs", "scorecard"]  # in the submitter pod, not the job


def test_every_image_is_the_commit_placeholder_of_the_pinned_ray():
    images = [i for _, d in manifests() for i in walk(d, "image")]
    images += list(walk(yaml.safe_load((CLUSTER / "aws/cluster.yaml").read_text()), "image"))
    assert len(images) >= 10 and set(images) == {PLACEHOLDER_IMAGE}, images
    versions = [v for _, d in manifests() for v in walk(d, "rayVersion")]
    assert len(versions) == 6 and set(versions) == {PIN}


def test_nothing_public_no_keys_token_auth_everywhere():
    for path, doc in manifests():
        text = path.read_text()
        assert not re.search(r"aws_(secret_)?access_key|AKIA[0-9A-Z]{16}", text, re.I), path
        assert "LoadBalancer" not in text and "NodePort" not in text and "Ingress" not in text, path
        for head in walk(doc, "headGroupSpec"):
            assert head["serviceType"] == "ClusterIP", path
    for path, doc in by_kind("RayCluster", "RayJob", "RayCronJob"):
        assert [a["mode"] for a in walk(doc, "authOptions")] == ["token"], path
        assert set(walk(doc, "serviceAccountName")) == {"rnnjobs"}, path
        assert all(v is True for v in walk(doc, "shutdownAfterJobFinishes")), path
    crons = by_kind("CronJob")
    assert len(crons) == 2
    for path, cron in crons:
        env = {e["name"]: e for c in walk(cron, "containers") for e in c[0]["env"]}
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "rnnjobs-ray-token", path
        assert set(walk(cron, "serviceAccountName")) == {"rnnjobs"}, path
    (_, cluster), = by_kind("RayCluster")
    assert cluster["spec"]["authOptions"]["secretName"] == "rnnjobs-ray-token"
    gpu = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and cluster["spec"]["enableInTreeAutoscaling"] is True


def test_launcher_config_cpu_head_spot_gpu_workers_instance_profile():
    cfg = yaml.safe_load((CLUSTER / "aws/cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    assert nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert all("IamInstanceProfile" in n["node_config"] for n in nodes.values())
    assert nodes["gpu_worker"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def _render_module():
    spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team"


def test_render_fills_in_registry_and_commit_and_stays_valid(tmp_path):
    render = _render_module()
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "renamed-long-ago.yaml").write_text("# stale\nkind: RayJob\n")
    assert render.main(["--registry", REGISTRY + "/", "--commit", "0a1b2c3d4e5f", "--out", str(tmp_path)]) == 0
    tagged = f"{REGISTRY}/rnnjobs:ray-{PIN}-0a1b2c3d4e5f"
    sources = sorted((CLUSTER / "k8s").glob("*.yaml")) + [CLUSTER / "aws" / "cluster.yaml"]
    rendered = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert rendered == sorted(p.relative_to(CLUSTER) for p in sources)  # the stale one is gone
    for src in sources:
        text = (tmp_path / src.relative_to(CLUSTER)).read_text()
        assert text.startswith("# Rendered by cluster/render.py") and "REGISTRY/" not in text and "-COMMIT" not in text
        docs = list(yaml.safe_load_all(text))
        # the same documents as the source, with the one tagged image wherever the placeholder was
        assert docs == list(yaml.safe_load_all(src.read_text().replace(PLACEHOLDER_IMAGE, tagged))), src.name
        assert set(i for d in docs for i in walk(d, "image")) <= {tagged}
        for doc in docs:
            if doc.get("kind") in KUBERAY:
                assert not crd_errors(doc), f"{src.name}: {crd_errors(doc)[:3]}"
    assert sum(1 for p in tmp_path.rglob("*.yaml") for d in yaml.safe_load_all(p.read_text())
               for i in walk(d, "image") if i == tagged) >= 10


@pytest.mark.parametrize("registry, commit, wrong", [
    ("https://registry.example.com", "0a1b2c3", "--registry"),
    ("Registry.Example.com", "0a1b2c3", "--registry"),
    (REGISTRY, "HEAD", "--commit"),
    (REGISTRY, "0a1b2c3-dirty", "--commit"),
])
def test_render_refuses_a_bad_registry_or_commit_and_writes_nothing(tmp_path, capsys, registry, commit, wrong):
    render = _render_module()
    assert render.main(["--registry", registry, "--commit", commit, "--out", str(tmp_path / "out")]) == 2
    assert f"{wrong} " in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_make_image_tags_by_the_head_commit_and_renders_with_that_tag():
    if not shutil.which("make") or not shutil.which("git"):
        absent("make or git is not installed")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:
        absent("not a git checkout")
    sha = head.stdout.strip()
    dry = subprocess.run(["make", "-n", "image", "push", f"REGISTRY={REGISTRY}", "COMMIT=ffffffffffff"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    tag = f"{REGISTRY}/rnnjobs:ray-{PIN}-{sha}"  # HEAD's sha, whatever COMMIT says: the tag must not lie
    assert f"docker build -f cluster/Dockerfile -t {tag} ." in dry.stdout
    assert f"render.py --registry {REGISTRY} --commit {sha} " in dry.stdout
    assert f"docker push {tag}" in dry.stdout
    assert "git status --porcelain" in dry.stdout  # uncommitted changes stop the build


def _quantity(v) -> float:
    """A Kubernetes CPU quantity ("8", "500m") as a number of CPUs."""
    v = str(v)
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def worker_groups(doc: dict) -> dict[str, dict[str, float]]:
    """Each worker group's Ray resources per node: CPUs (rayStartParams num-cpus, else the container's
    CPU limit, as Ray counts them in a pod) and GPUs (the nvidia.com/gpu limit)."""
    out = {}
    for groups in walk(doc, "workerGroupSpecs"):
        for g in groups:
            (c,) = [c for c in g["template"]["spec"]["containers"] if c["name"] == "ray-worker"]
            limits = c["resources"]["limits"]
            cpus = g.get("rayStartParams", {}).get("num-cpus", limits["cpu"])
            out[g["groupName"]] = {"CPU": _quantity(cpus), "GPU": float(limits.get("nvidia.com/gpu", 0))}
    return out


def trial_bundles(args: list[str]) -> tuple[list[dict[str, float]], int]:
    """The resource bundles one trial of ``rnnjobs tune ARGS`` asks Ray for (each must fit on one
    node) and the search's max_concurrent_trials."""
    from jobs.tune import trial_bundles as bundles
    from rnnlib.search import load_search

    search = load_search(str(_local(args[2])), args[3:])
    return bundles(search), search.settings.max_concurrent_trials


def misfits(bundles: list[dict], groups: dict[str, dict]) -> list[dict]:
    """The bundles that fit no worker group's node."""
    return [b for b in bundles if not any(b["CPU"] <= r["CPU"] and b["GPU"] <= r["GPU"] for r in groups.values())]


def max_cpus(doc: dict) -> float:
    """The CPUs of a cluster's worker groups at their maximum size."""
    return sum(g.get("maxReplicas", g["replicas"]) * worker_groups({"workerGroupSpecs": [g]})[g["groupName"]]["CPU"]
               for groups in walk(doc, "workerGroupSpecs") for g in groups)


TUNE_COMMANDS = [(n, _rnnjobs(a)) for n, a in manifest_commands() if _rnnjobs(a)[1] == "tune"]


@pytest.mark.parametrize("name, args", TUNE_COMMANDS, ids=[n for n, _ in TUNE_COMMANDS])
def test_tune_trials_fit_the_worker_groups(name, args):
    """A trial whose bundles fit no worker group stays PENDING for ever on an autoscaling cluster (the
    autoscaler finds no node type to add): every shipped search must fit its own cluster's groups and
    raycluster.yaml's, and its concurrency must not ask for more CPUs than its own cluster has."""
    bundles, concurrent = trial_bundles(args)
    for doc in (_doc(name), _doc("raycluster.yaml")):
        assert not misfits(bundles, worker_groups(doc)), (name, doc["metadata"]["name"], worker_groups(doc))
    assert concurrent and concurrent * sum(b["CPU"] for b in bundles) <= max_cpus(_doc(name)), (name, concurrent)


def test_a_trial_too_big_for_every_group_is_caught():
    groups = worker_groups(_doc("raycluster.yaml"))
    assert groups == {"cpu": {"CPU": 8.0, "GPU": 0.0}, "gpu": {"CPU": 8.0, "GPU": 1.0}}
    config = IMAGE_ROOT + "jobs/configs/forecast-tune.yaml"
    for too_big in (["tune.cpus_per_trial=9"], ["tune.gpus_per_trial=2"],
                    ["tune.trial=trainer", "scaling.workers=2", "scaling.cpus_per_worker=12"]):
        bundles, _ = trial_bundles(["rnnjobs", "tune", config, *too_big])
        assert misfits(bundles, groups), too_big
    assert not misfits(trial_bundles(["rnnjobs", "tune", config, "tune.gpus_per_trial=0.25"])[0], groups)
