"""Render the cluster manifests for one image, tagged by the commit it was built from.

The sources under cluster/k8s/ and cluster/aws/ name the image ``REGISTRY/rnnjobs:ray-<ray>-COMMIT``;
this writes a copy of each under OUT (``OUT/k8s/*.yaml``, ``OUT/aws/cluster.yaml``) with the
registry and the commit filled in, so every node of every cluster runs the code of that commit,
never whatever an old ``:ray-2.60.0`` tag last pointed at. ``make image`` builds the image and runs
this; ``make manifests COMMIT=<sha>`` renders for an image built earlier (a rollback).

    python cluster/render.py --registry 123456789012.dkr.ecr.us-east-1.amazonaws.com \\
        --commit "$(git rev-parse --short=12 HEAD)" --out outputs/cluster
    kubectl apply -f outputs/cluster/k8s/serviceaccount.yaml -f outputs/cluster/k8s/raycluster.yaml

Each rendered file is checked before anything is written: it parses (``yaml.safe_load_all``), no
placeholder is left, and every ``image`` in it is the one tagged image. Exit 2 on a bad registry
or commit, naming it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent
SOURCES = ("k8s", "aws")  # subfolders of cluster/ whose *.yaml name the image
PLACEHOLDER = re.compile(r"REGISTRY/rnnjobs:ray-(?P<ray>\d+\.\d+\.\d+)-COMMIT")
# An image repository (docker's reference grammar, lower case): host[:port] then /path parts.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REGISTRY_RE = re.compile(rf"^{_COMPONENT}(?:\.{_COMPONENT})*(?::\d+)?(?:/{_COMPONENT})*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")


class RenderError(ValueError):
    """A bad registry or commit, or a source that does not render to one tagged image."""


def image(registry: str, ray: str, commit: str) -> str:
    return f"{registry}/rnnjobs:ray-{ray}-{commit}"


def _images(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from _images(v)
    elif isinstance(node, list):
        for v in node:
            yield from _images(v)


def render_text(text: str, registry: str, commit: str, name: str = "manifest") -> tuple[str, set[str]]:
    """``text`` with the placeholder image filled in; (the text, the images its documents name)."""
    registry = registry.rstrip("/")
    if not REGISTRY_RE.match(registry):
        raise RenderError(f"--registry {registry!r}: not an image repository (host[:port][/path], lower case, "
                          "no scheme), e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com")
    if not COMMIT_RE.match(commit):
        raise RenderError(f"--commit {commit!r}: not a git commit (7-40 lower-case hex digits), e.g. "
                          "$(git rev-parse --short=12 HEAD)")
    out = PLACEHOLDER.sub(lambda m: image(registry, m["ray"], commit), text)
    if "REGISTRY/" in out or "-COMMIT" in out:
        raise RenderError(f"{name}: a placeholder is left after rendering (the image must be written "
                          "REGISTRY/rnnjobs:ray-<ray version>-COMMIT)")
    images = {i for doc in yaml.safe_load_all(out) for i in _images(doc)}
    wrong = {i for i in images if not i.startswith(f"{registry}/rnnjobs:ray-") or not i.endswith(f"-{commit}")}
    if wrong:
        raise RenderError(f"{name}: image(s) {', '.join(sorted(wrong))} are not the tagged image")
    return out, images


def render(out: Path, registry: str, commit: str, src: Path = CLUSTER) -> tuple[str, list[Path]]:
    """Render every source manifest into ``out`` (its earlier *.yaml removed first); (the image, the files)."""
    rendered, images = {}, set()
    for sub in SOURCES:
        for path in sorted((src / sub).glob("*.yaml")):
            rel = path.relative_to(src)
            rendered[rel], found = render_text(path.read_text(), registry, commit, f"cluster/{rel.as_posix()}")
            images |= found
    if len(images) != 1:
        raise RenderError(f"the manifests name {len(images)} images ({', '.join(sorted(images))}); expected one, "
                          "the image `make image` builds")
    (tagged,) = images
    for sub in SOURCES:  # a manifest deleted or renamed in the sources must not be applied from here
        for stale in (out / sub).glob("*.yaml"):
            stale.unlink()
    written = []
    for rel, text in rendered.items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f"# Rendered by cluster/render.py from cluster/{rel.as_posix()} for {tagged}: edit the "
                        "source and render again.\n" + text)
        written.append(dest)
    return tagged, written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="image repository host[:port][/path], e.g. an ECR registry")
    p.add_argument("--commit", required=True, help="the git commit the image was built from (short sha)")
    p.add_argument("--out", type=Path, default=Path("outputs/cluster"), help="where the rendered copies go")
    args = p.parse_args(argv)
    try:
        tagged, files = render(args.out, args.registry, args.commit)
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    k8s = args.out / "k8s"
    print(f"rendered {len(files)} file(s) under {args.out} for {tagged}\n"
          f"apply: kubectl apply -f {k8s / 'serviceaccount.yaml'} -f {k8s / 'raycluster.yaml'} (and the jobs you run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
