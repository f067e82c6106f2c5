"""notebooks/quickstart.ipynb runs headless from top to bottom (nbclient); any failing cell fails,
and what it computes is checked: a cell added after the notebook's own (in memory; the file is
left as it is) hands its results back as JSON."""

import json
import math
import re
import time

import pandas as pd
import pytest
from conftest import ROOT, optional

pytestmark = [pytest.mark.slow(seconds=30), pytest.mark.timeout(600)]

LAST = """import json as _json
print("RESULTS " + _json.dumps({
    "nats_per_char": text.metrics["val"]["nats_per_char"], "vocab": len(text.task.vocab),
    "forecast": {k: forecaster.metrics[k] for k in ("rmae", "interval", "series")},
    "coverage": forecaster.metrics["model"]["coverage"],
    "as_of": as_of, "fc": fc.assign(as_of=fc["as_of"].astype(str), date=fc["date"].astype(str)).to_dict("records"),
}))"""


def test_quickstart_notebook_runs_and_computes_sane_results():
    nbformat = optional("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(LAST))
    t0 = time.monotonic()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
                   ).execute()
    seconds = time.monotonic() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the forecast plot is missing"
    text = "".join(o.get("text", "") for o in outputs)
    assert "--- temperature 1.2 ---" in text
    r = json.loads(re.search(r"^RESULTS (.*)$", text, re.M).group(1))

    # the char model learned: held-out loss below a uniform guess over its vocabulary, as printed
    assert r["vocab"] > 40 and r["nats_per_char"] < math.log(r["vocab"]) - 0.5
    printed = float(re.search(r"held-out loss: ([\d.]+) nats/char", text).group(1))
    assert printed == pytest.approx(r["nats_per_char"], abs=6e-4)
    # the forecaster is close to persistence on the test split and its band covers about its interval
    f = r["forecast"]
    assert f["interval"] == 80 and f["series"] >= 20
    assert 0.8 < f["rmae"] < 1.1 and 0.6 < r["coverage"] < 0.95
    # the forecasts as of the past date: every ticker with enough history, the band around the median
    fc = pd.DataFrame(r["fc"])
    assert {"AAPL", "AMZN", "JPM", "XOM"} <= set(fc["ticker"]) and fc["ticker"].nunique() >= 20
    assert len(fc) == fc["ticker"].nunique() * 5 and sorted(set(fc["step"])) == [1, 2, 3, 4, 5]
    assert (pd.to_datetime(fc["as_of"]) <= r["as_of"]).all() and (pd.to_datetime(fc["date"]) > r["as_of"]).all()
    assert (fc["lo_80"] <= fc["forecast"]).all() and (fc["forecast"] <= fc["hi_80"]).all()
    assert (fc["lo_80"] < fc["hi_80"]).all() and (fc[["lo_80", "forecast", "hi_80"]] > 0).all().all()
    print(f"notebook ran in {seconds:.0f}s")
