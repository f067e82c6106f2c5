"""``rnnjobs score CONFIG [key=value ...]`` and ``rnnjobs verify RUN_URI``.

Ray Data: list the history files -> scoring actors that load the bundle once and score a batch
of files together (all their windows in large forward passes), each writing its own Parquet
part -> the driver collects one small summary row per batch and publishes (rnnlib.publish).
Memory stays flat in the number of series: only summaries travel back to the driver.

run_id is derived from the model's weights, the input listing (paths, sizes, times), as_of
and the scoring settings: rerunning a published run is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from rnnlib import publish, storage
from rnnlib.checkpoint import open_bundle, versions
from rnnlib.config import ScoreConfig, apply_overrides, read_yaml, section_from_dict, to_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import ConfigError, UserError
from rnnlib.stocks import REJECT_COLUMNS, SUFFIXES

# Settings that change what is computed; pool sizes and batch sizes do not.
_RUN_KEYS = ("mode", "as_of", "backtest_days", "step", "columns")


class ScoreBatch:
    """A Ray Data actor: loads the bundle once, scores batches of history files."""

    def __init__(self, model: str, run_uri: str, attempt: str, settings: dict, endpoint_url: str | None):
        self.bundle = open_bundle(model, task="forecast", endpoint_url=endpoint_url)
        self.run_uri, self.attempt, self.settings, self.endpoint_url = run_uri, attempt, settings, endpoint_url

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from rnnlib.scoring import score_files

        _fault_hook()
        uris = list(batch["uri"])
        with tempfile.TemporaryDirectory() as tmp:
            local = {str(storage.local_copy(u, tmp, self.endpoint_url)): u for u in uris}
            res = score_files(self.bundle, [Path(p) for p in local], **self.settings)
        rejects = res.rejects.assign(file=res.rejects["file"].map(lambda f: local.get(f, f)))  # URIs, not temp paths
        key = "\n".join(uris)
        parts = [publish.write_part(self.run_uri, publish.part_name("forecasts", self.attempt, key),
                                    res.forecasts, "forecasts", self.endpoint_url)]
        if res.metrics is not None:
            parts.append(publish.write_part(self.run_uri, publish.part_name("metrics", self.attempt, key),
                                            res.metrics, "metrics", self.endpoint_url))
        h = res.hist
        return pd.DataFrame([{
            "files": len(uris), "parts": json.dumps(parts), "rejects": rejects.to_json(orient="records"),
            "rows_in": h.rows_in, "rows_kept": h.rows_kept, "rows_rejected": h.rows_rejected,
            "rows_after_as_of": res.rows_after_as_of, "series_in": len(h.series) + len(h.rejected_series()),
            "series_scored": res.series_scored}])


def _fault_hook() -> None:
    """Test-only: RNNJOBS_SCORE_FAULT_MARKER=path kills the first actor call (once per marker)."""
    marker = os.environ.get("RNNJOBS_SCORE_FAULT_MARKER")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


def load_score_config(config: str, overrides: list[str]) -> ScoreConfig:
    return section_from_dict(ScoreConfig, apply_overrides(read_yaml(config), overrides), config)


def run_id(cfg: ScoreConfig, model_sha: str, listing: list[tuple[str, int, float]]) -> str:
    key = {"model": model_sha, "input": listing, **{k: v for k, v in to_dict(cfg).items() if k in _RUN_KEYS}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(config: str, overrides: list[str]) -> int:
    cfg = load_score_config(config, overrides)
    if not cfg.model:
        raise ConfigError(["model: required; point it at a forecast bundle (<storage>/<run>/model)"], config)
    bundle = open_bundle(cfg.model, task="forecast", endpoint_url=cfg.endpoint_url)  # fails before Ray
    source = cfg.input or str(sample_stocks_dir())
    listing = storage.list_files(source, SUFFIXES, endpoint_url=cfg.endpoint_url)
    if not listing:
        raise UserError(f"{source}: no .csv or .parquet files")
    rid = run_id(cfg, bundle.meta["weights_sha256"], listing)
    run_uri = storage.join(cfg.output, f"run={rid}")
    print(f"score run {rid}: {cfg.mode}, {len(listing)} file(s) from {source}, model {cfg.model}")
    if publish.is_published(run_uri, cfg.endpoint_url):
        print(f"already published: {run_uri} (nothing to do)")
        return 0

    import ray

    from jobs.ray_setup import init_ray

    init_ray()
    attempt = uuid.uuid4().hex[:8]
    settings = {"mode": cfg.mode, "as_of": cfg.as_of, "backtest_days": cfg.backtest_days, "step": cfg.step,
                "batch_size": cfg.batch_size, "columns": cfg.columns}
    start = time.perf_counter()
    ds = ray.data.from_items([{"uri": u} for u, _, _ in listing])
    ds = ds.map_batches(
        ScoreBatch, batch_size=cfg.files_per_batch, batch_format="pandas",
        # the endpoint as the driver resolved it (config or AWS_ENDPOINT_URL_S3); never credentials
        fn_constructor_kwargs={"model": cfg.model, "run_uri": run_uri, "attempt": attempt,
                               "settings": settings, "endpoint_url": storage.endpoint(cfg.endpoint_url)},
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.gpu else 0)
    summaries = ds.to_pandas()
    scored_s = time.perf_counter() - start
    manifest, rejects = _manifest(cfg, rid, attempt, bundle, source, listing, summaries, run_uri)
    if os.environ.get("RNNJOBS_SCORE_CRASH_BEFORE_COMMIT"):  # test-only: die between parts and commit
        os._exit(1)
    if not publish.commit(run_uri, attempt, manifest, cfg.endpoint_url):
        print(f"another attempt published {run_uri} first; this attempt's files were removed")
        return 0
    removed = publish.clean_unlisted(run_uri, cfg.endpoint_url)
    c = manifest["counts"]
    print(f"published {run_uri} in {scored_s:.1f}s: {c['series_scored']} series scored, "
          f"{c['series_rejected']} rejected, {c['forecast_rows']} forecast rows"
          + (f"; removed {len(removed)} file(s) of earlier failed attempts" if removed else ""))
    if len(rejects):
        for r in rejects[rejects.action == "reject_series"].itertuples():
            print(f"  rejected {r.ticker or '?'} ({os.path.basename(str(r.file))}): {r.reason}")
    print(f"verify: rnnjobs verify {run_uri}")
    return 0


def _manifest(cfg, rid, attempt, bundle, source, listing, summaries, run_uri) -> dict:
    files = [p for s in summaries["parts"] for p in json.loads(s)]
    rows = [r for s in summaries["rejects"] for r in json.loads(s)]
    rejects = pd.DataFrame(rows, columns=REJECT_COLUMNS).sort_values(["file", "ticker", "row"], na_position="first",
                                                                       ignore_index=True)  # same bytes every attempt
    files.append(publish.write_part(run_uri, "rejects.parquet", rejects, "rejects", cfg.endpoint_url))
    tot = {k: int(summaries[k].sum()) for k in ("rows_in", "rows_kept", "rows_rejected", "rows_after_as_of",
                                                 "series_in", "series_scored", "files")}
    counts = {**tot, "series_rejected": tot["series_in"] - tot["series_scored"],
              "forecast_rows": sum(f["rows"] for f in files if f["kind"] == "forecasts")}
    listing_sha = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"run_id": rid, "attempt": attempt, "created": datetime.now(timezone.utc).isoformat(),
            "mode": cfg.mode, "as_of": cfg.as_of,
            "model": {"uri": cfg.model, "weights_sha256": bundle.meta["weights_sha256"], **bundle.data},
            "input": {"uri": source, "files": len(listing), "listing_sha256": listing_sha},
            "counts": counts, "files": files, "config": to_dict(cfg), "versions": versions()}, rejects


def run_verify(run_uri: str, endpoint_url: str | None) -> int:
    v = publish.verify(run_uri, endpoint_url)
    if v.ok:
        print(f"{run_uri}: OK, {v.checked} file(s) match the manifest")
        return 0
    print(f"{run_uri}: {len(v.problems)} problem(s):", file=sys.stderr)
    for p in v.problems:
        print(f"  - {p}", file=sys.stderr)
    return 1
