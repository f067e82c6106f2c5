"""`make demo`'s pipeline (search -> train with 2 workers -> score -> verify -> report -> char model)
with tiny settings, and the README's make commands."""

import re

import pytest
from conftest import ROOT
from jobhelpers import run

pytestmark = [pytest.mark.slow(seconds=130), pytest.mark.timeout(600)]


def test_demo_pipeline_end_to_end(tmp_path, shared_ray):
    r = run("demo", "--quick", "--out", tmp_path, timeout=500, env=shared_ray)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = tmp_path / "report"
    md = (report / "report.md").read_text()
    for png in ("1-search.png", "2-loss.png", "2-vs_persistence.png", "2-forecasts.png", "3-score_forecasts.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
        assert f"]({png})" in md
    assert "## Search" in md and "## Training" in md and "## Score run" in md
    out = r.stdout
    assert "6 trials" in out and "OK, " in out and "== summary" in out
    assert re.search(r"scored 2[56] of 26 series", out)
    assert "rnnjobs submit --address" in out  # how to run it on a cluster
    # a second run finds every step done
    again = run("demo", "--quick", "--out", tmp_path, timeout=500, env=shared_ray)
    assert again.returncode == 0 and again.stdout.count("already") >= 3, again.stdout[-3000:]


def test_readme_make_commands_are_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    used = set(re.findall(r"\bmake ([a-z][\w-]*)", readme))
    assert {"demo", "test"} <= used, "the quickstart is `make demo` and `make test`"
    assert used <= targets, f"README mentions make targets the Makefile lacks: {used - targets}"
