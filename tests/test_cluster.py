"""cluster/: the image pins the same Ray, the KubeRay manifests validate against the CRD schemas,
every entrypoint names a config that exists and that rnnjobs accepts, and the manifests name the
image by a commit placeholder that cluster/render.py fills in."""

import copy
import functools
import importlib.util
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
    for src in re.findall(r"^COPY (?:--\S+ )*(.+?) \S+$", text, re.M):
        for name in src.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"


def test_every_manifest_parses_and_has_the_expected_kinds():
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds == sorted(["ServiceAccount", "RayCluster", "RayJob", "RayJob", "RayJob", "RayCronJob", "CronJob"])


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


def _entrypoints():
    for path, doc in by_kind("RayJob", "RayCronJob"):
        for e in walk(doc, "entrypoint"):
            yield path.name, e
    for path, doc in by_kind("CronJob"):
        for c in walk(doc, "containers"):
            for container in c:
                yield path.name, " ".join(container.get("args", []))


@pytest.mark.parametrize("name, entry", list(_entrypoints()), ids=lambda v: v if v.endswith(".yaml") else "")
def test_entrypoints_name_configs_that_rnnjobs_accepts(name, entry):
    args = shlex.split(entry)
    if args[:2] == ["rnnjobs", "submit"]:
        args = ["rnnjobs", *args[args.index("submit") + 3:]]  # skip --address URL
    assert args[0] == "rnnjobs" and args[1] in ("train", "tune", "score", "generate"), entry
    config = args[2]
    assert config.startswith(IMAGE_ROOT), f"{name}: {config} is not in the image's project folder"
    local = ROOT / config[len(IMAGE_ROOT):]
    assert local.is_file(), f"{name}: {local} does not exist"
    resolved_config(args[1], str(local), args[3:])  # raises ConfigError (exit 2) on a bad key or value


def test_every_image_is_the_commit_placeholder_of_the_pinned_ray():
    images = [i for _, d in manifests() for i in walk(d, "image")]
    images += list(walk(yaml.safe_load((CLUSTER / "aws/cluster.yaml").read_text()), "image"))
    assert len(images) >= 10 and set(images) == {PLACEHOLDER_IMAGE}, images
    versions = [v for _, d in manifests() for v in walk(d, "rayVersion")]
    assert len(versions) == 5 and set(versions) == {PIN}


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
    (_, cron), = by_kind("CronJob")
    env = {e["name"]: e for c in walk(cron, "containers") for e in c[0]["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "rnnjobs-ray-token"
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
