"""``rnnjobs demo``: the whole pipeline on a local Ray, the bundled real data and a local folder
as the object store. Each step is the job a user would run on its own (printed at the end):

1. search: 3 cell types x 2 window sizes, a few epochs, ASHA (``rnnjobs tune``)
2. train the best configuration with 2 Ray Train workers (``rnnjobs train best.yaml``)
3. score every bundled ticker with Ray Data and publish (``rnnjobs score``), then ``verify``
4. ``rnnjobs report`` over the three: report.md with plots
5. a small char model on tinyshakespeare (in this process) and a sample

Every step is idempotent: a second ``make demo`` finds each output done and only reports.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd

from rnnlib import publish
from rnnlib.config import load_job
from rnnlib.fit import fit
from rnnlib.sampling import generate
from rnnlib.search import load_search
from rnnlib.tables import forecast_table, table

CONFIGS = Path(__file__).parent / "configs"
GRID = "search={model.cell: {grid: [rnn, lstm, gru]}, data.window: {grid: [20, 30]}}"
# (full demo, --quick): overrides per step
SEARCH = (["tune.num_samples=1", "train.epochs=4", "tune.grace_period=1", GRID],
          ["tune.num_samples=1", "train.epochs=2", "model.hidden=8", GRID])
TRAIN = (["scaling.workers=2", "train.epochs=8"], ["scaling.workers=2", "train.epochs=1"])
TEXT = (["train.epochs=4", "train.max_batches=60", "train.patience=0", "model.hidden=256", "train.lr=0.003",
         "model.dropout=0"],
        ["train.epochs=1", "train.max_batches=5", "model.hidden=64"])


def _step(n: int, what: str, command: str) -> None:
    print(f"\n== {n}. {what}\n   $ {command}", flush=True)


def run(out: str = "outputs/demo", quick: bool = False) -> int:
    from jobs import report, score, train, tune
    from jobs.ray_setup import init_ray

    out, t0 = Path(out), time.perf_counter()
    init_ray()  # one local Ray for every step
    tune_cfg = str(CONFIGS / "forecast-tune.yaml")
    search_args = [*SEARCH[quick], f"storage={out / 'tune'}"]
    _step(1, "search: 3 cells x 2 windows, ASHA",
          f"rnnjobs tune jobs/configs/forecast-tune.yaml {' '.join(search_args)}")
    code, exp = tune.search_job(load_search(tune_cfg, search_args))
    if code:
        return 1
    exp = Path(exp)

    train_args = [*TRAIN[quick], f"storage={out / 'runs'}"]
    _step(2, "train the best configuration with 2 Ray Train workers",
          f"rnnjobs train {exp / 'best.yaml'} {' '.join(train_args)}")
    code, run_dir = train.train(load_job(exp / "best.yaml", train_args))
    if code:
        return 1
    run_dir = Path(run_dir)

    score_args = [f"model={run_dir / 'model'}", f"output={out / 'forecasts'}"]
    _step(3, "score every bundled ticker with Ray Data, publish, verify",
          f"rnnjobs score jobs/configs/forecast-score.yaml {' '.join(score_args)}")
    if score.run(str(CONFIGS / "forecast-score.yaml"), score_args):
        return 1
    published = max((p for p in (out / "forecasts").glob("as_of=*/run=*") if publish.is_published(str(p))),
                    key=lambda p: (p / publish.SUCCESS).stat().st_mtime)  # this model's run: the newest
    if score.run_verify(str(published), None):
        return 1

    _step(4, "report", f"rnnjobs report {exp} {run_dir} {published} --out {out / 'report'}")
    report.run([str(exp), str(run_dir), str(published)], str(out / "report"), 4, None)

    text_cfg = load_job(CONFIGS / "text-train.yaml", TEXT[quick])
    _step(5, f"a small char model ({text_cfg.model.cell} 1x{text_cfg.model.hidden}) on tinyshakespeare, "
             "in this process", "rnnjobs train jobs/configs/text-train.yaml  (the full run, on Ray)")
    res = fit(text_cfg, out=out / "text-model", log=lambda s: print("  " + s, flush=True))
    prompt = "ROMEO:\n"
    print(f"  val {res.metrics['val']['nats_per_char']:.3f} nats/char; sample at temperature 0.8:\n{prompt}", end="")
    generate(res.model, res.task.vocab, prompt, 200 if quick else 300, temperature=0.8, seed=0,
             on_text=lambda c: print(c, end="", flush=True))
    print()
    _summary(out, exp, run_dir, published, res.bundle, time.perf_counter() - t0)
    return 0


def _summary(out: Path, exp: Path, run_dir: Path, published: Path, text_bundle, seconds: float) -> None:
    results = pd.read_parquet(exp / "results.parquet")
    rows = [[i + 1, r["model.cell"], r["data.window"], r["epochs"], r["stopped"], r["best_val_loss"]]
            for i, r in results.head(6).iterrows()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, manifest = publish.read_manifest(str(published))
    c = manifest["counts"]
    rejects = pd.read_parquet(io.BytesIO((published / "rejects.parquet").read_bytes()))
    print(f"\n== summary ({seconds:.0f}s)\n\nsearch: {len(results)} trials, "
          f"{int((results['stopped'] == 'asha').sum())} stopped early by ASHA\n"
          + table(rows, ["#", "cell", "window", "epochs", "stopped", "best val loss"]))
    print(f"\nbest configuration trained with 2 workers, test split:\n{forecast_table(metrics['final'])}")
    print(f"\nscored {c['series_scored']} of {c['series_in']} series ({c['series_rejected']} rejected), "
          f"{c['forecast_rows']} forecast rows; {c['rows_rejected']} rows rejected ({len(rejects)} reasons in "
          "rejects.parquet)")
    print("\n" + table([
        ["search", exp, f"rnnjobs tune jobs/configs/forecast-tune.yaml storage={out / 'tune'}"],
        ["model", run_dir / "model", f"rnnjobs train {exp / 'best.yaml'} scaling.workers=2"],
        ["forecasts", published, f"rnnjobs score jobs/configs/forecast-score.yaml model={run_dir / 'model'}"],
        ["report", out / "report" / "report.md", f"rnnjobs report {exp} {run_dir} {published}"],
        ["char model", text_bundle, "rnnjobs generate --model PATH --prompt 'ROMEO:'"],
    ], ["output", "where", "run it on its own"]))
    print("\non a cluster: rnnjobs submit --address http://HEAD:8265 tune|train|score CONFIG ... "
          "(see cluster/README.md)")
