"""cluster/: the image pins the same Ray, the KubeRay manifests validate against the CRD schemas,
and every entrypoint names a config that exists and that rnnjobs accepts."""

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, absent, optional

from jobs.submit import resolved_config

CLUSTER = ROOT / "cluster"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
IMAGE_ROOT = "/home/ray/rnnjobs/"  # where cluster/Dockerfile puts the project
PIN = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)


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


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob", "RayCronJob"])
def test_kuberay_resources_validate_against_the_crds(kind):
    jsonschema = optional("jsonschema")
    files = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
    crd_file = CRDS / f"ray.io_{files[kind]}.yaml"
    if not crd_file.exists():
        absent(f"{crd_file} is absent")
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    docs = by_kind(kind)
    assert docs
    for path, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        assert not errors, f"{path.name}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])


def test_a_typo_fails_validation():
    jsonschema = optional("jsonschema")
    crd_file = CRDS / "ray.io_rayjobs.yaml"
    if not crd_file.exists():
        absent(f"{crd_file} is absent")
    version = yaml.safe_load(crd_file.read_text())["spec"]["versions"][0]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    (_, doc), *_ = by_kind("RayJob")
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinish"] = True
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


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


def test_images_and_ray_versions_equal_the_pin():
    images = [i for _, d in manifests() for i in walk(d, "image")]
    images += list(walk(yaml.safe_load((CLUSTER / "aws/cluster.yaml").read_text()), "image"))
    assert images and all(i.endswith(f":ray-{PIN}") for i in images), images
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
