"""notebooks/quickstart.ipynb runs headless from top to bottom (nbclient); any failing cell fails."""

import time

import pytest
from conftest import ROOT, optional

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_quickstart_notebook_runs():
    nbformat = optional("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    t0 = time.monotonic()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
                   ).execute()
    seconds = time.monotonic() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the forecast plot is missing"
    text = "".join(o.get("text", "") for o in outputs)
    assert "--- temperature 1.2 ---" in text and "nats/char" in text
    print(f"notebook ran in {seconds:.0f}s")
