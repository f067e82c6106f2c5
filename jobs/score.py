"""``rnnjobs score CONFIG [key=value ...]`` and ``rnnjobs verify RUN_URI``.

Ray Data: list the history files (rnnlib.sources) -> scoring actors that load the bundle once
and score a batch of series together (all their windows in large forward passes), each writing
its own Parquet part -> the driver collects one small summary row per batch, checks that no
series was scored twice, and publishes (rnnlib.publish). Per-ticker files are scored in batches
of files as they are; when a ticker's rows span files (daily partitions), read tasks turn files
into rows and a hash shuffle by ticker hands blocks of whole tickers to scoring tasks in the same
processes (to actors on GPUs). Memory stays flat in the number of series: only summaries travel
back to the driver.

run_id is derived from the model's weights, the input listing (paths, sizes, times), as_of
and the scoring settings: rerunning a published run is a no-op. A run is filed under
``<output>/as_of=<date>/run=<id>/`` (the date: as_of, or today in the exchange's time zone) and
the LATEST pointers move to it once it is published (rnnlib.publish).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import sys
import time
import uuid
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from jobs import tracking
from rnnlib import publish, storage
from rnnlib.config import ScoreConfig, apply_overrides, read_yaml, section_from_dict, to_dict
from rnnlib.datasets import sample_stocks_dir
from rnnlib.errors import ConfigError, UserError
from rnnlib.features import source_columns
from rnnlib.sources import Entry, Listing, list_source
from rnnlib.stocks import REJECT_COLUMNS, REJECT_SERIES, SKIP_FILE, Rows, read_rows, rejected_line, validate_rows

# rnnlib.bundle and rnnlib.device import torch (about 1 s): they are imported where the model is
# used, so the long layout's read tasks, which import this module in new worker processes, start
# without it (a daily job ran 10% faster).

# Settings that change what is computed; pool sizes and batch sizes do not.
_RUN_KEYS = ("mode", "as_of", "backtest_days", "step", "columns")
_RUN_KEYS_IF_SET = ("delimiter", "date_format")  # in the key only when set: earlier run ids stay as they were
_READ_KEYS = ("columns", "delimiter", "date_format")  # settings for reading files, not for scoring


class ScoreBatch:
    """A Ray Data actor: loads the bundle once, scores batches of history files (per-ticker layout:
    every ticker's rows are in the batch)."""

    def __init__(self, model: str, run_uri: str, attempt: str, settings: dict, endpoint_url: str | None,
                 gpu: bool = False):
        from rnnlib.bundle import open_bundle
        from rnnlib.device import choose, place

        self.bundle = open_bundle(model, task="forecast", endpoint_url=endpoint_url)
        place(self.bundle.model, choose(gpu))  # gpu: Ray gave this actor one; scoring runs where the model is
        self.run_uri, self.attempt, self.settings, self.endpoint_url = run_uri, attempt, settings, endpoint_url

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from rnnlib.scoring import score_files

        entries = [Entry.from_json(e) for e in batch["entry"]]
        uris = [e.uri for e in entries]
        res = score_files(self.bundle, Listing(uris[0], entries), endpoint_url=self.endpoint_url, **self.settings)
        return self.publish(res, "\n".join(uris), len(uris))

    def publish(self, res, key: str, files: int) -> pd.DataFrame:
        """Write this batch's parts; return its one-row summary for the driver."""
        parts = [publish.write_part(self.run_uri, publish.part_name("forecasts", self.attempt, key),
                                    res.forecasts, "forecasts", self.endpoint_url)]
        if res.metrics is not None:
            parts.append(publish.write_part(self.run_uri, publish.part_name("metrics", self.attempt, key),
                                            res.metrics, "metrics", self.endpoint_url))
        h = res.hist
        return pd.DataFrame([{
            "files": files, "parts": json.dumps(parts), "rejects": res.rejects.to_json(orient="records"),
            "tickers": json.dumps(sorted(res.forecasts["ticker"].unique().tolist())),
            "rows_in": h.rows_in, "rows_kept": h.rows_kept, "rows_rejected": h.rows_rejected,
            "rows_after_as_of": res.rows_after_as_of, "series_in": len(h.series) + len(h.rejected_series()),
            "series_scored": res.series_scored, "windows": res.windows}])


# Long layout: files -> rows (stage 1) -> hash shuffle by ticker -> blocks of whole tickers (stage 2).
# What reading refused (bad lines, unreadable files) travels in one extra row per file batch,
# under a ticker no history can have, so the counts add up where the block is validated.
_INFO_TICKER, _INFO = "\x00read", "__info"
# The 1,259 daily files of the 505 S&P histories (36 MB) make 9 blocks: their backtest job on 2 CPUs
# took 13.7 s (median of 8) against 14.75 s with 39 blocks, one per 32 files as before (ad-hoc A/B).
BLOCK_BYTES = 4 << 20


def read_rows_batch(batch: pd.DataFrame, files: list[str], needed: tuple, columns: dict,
                    endpoint_url: str | None, delimiter: str | None = None, date_format: str | None = None) -> pa.Table:
    """Stage 1: read a batch of files into typed rows (``stocks.ROW_SCHEMA``) + one info row."""
    entries = [Entry.from_json(e) for e in batch["entry"]]
    rows = read_rows(Listing("", entries), needed=needed, columns=columns, endpoint_url=endpoint_url,
                     files=files, uniform=True, delimiter=delimiter, date_format=date_format)
    info = {"files": len(entries), "rejects": rows.rejects}
    table = rows.table.append_column(_INFO, pa.nulls(rows.table.num_rows, pa.string()))
    row = {c: pa.nulls(1, table.schema.field(c).type) for c in table.column_names}
    row.update(ticker=pa.array([_INFO_TICKER]), **{_INFO: pa.array([json.dumps(info)])})
    return pa.concat_tables([table, pa.table(row, schema=table.schema)])


class ScoreBlock(ScoreBatch):
    """Stage 2: a block holding every row of its tickers (Ray Data's hash shuffle by ticker, as
    ``groupby().map_groups`` does), validated and scored in one batched pass."""

    def __call__(self, table: pa.Table) -> pd.DataFrame:
        from rnnlib.scoring import score_histories, validation_args

        is_info = pc.fill_null(pc.equal(table["ticker"], _INFO_TICKER), False)
        infos = [json.loads(i) for i in table.filter(is_info)[_INFO].to_pylist()]
        data = table.filter(pc.invert(is_info)).drop_columns([_INFO])
        rejects = [r for i in infos for r in i["rejects"]]
        rows = Rows(data, self.settings["files"], rejects, data.num_rows + sum(r["rows"] for r in rejects))
        hist = validate_rows(rows, **validation_args(self.bundle, self.settings["mode"]))
        res = score_histories(self.bundle, hist, **{k: v for k, v in self.settings.items()
                                                     if k not in (*_READ_KEYS, "files")})
        tickers = pc.unique(data["ticker"]).to_pylist()
        key = "\n".join(sorted(map(str, tickers))) or "\n".join(json.dumps(i) for i in infos)
        return self.publish(res, key, sum(i["files"] for i in infos))


_scorer: tuple[tuple[str, str], ScoreBlock] | None = None  # this process's (run_uri, attempt) and its ScoreBlock


def score_block(table: pa.Table, **kwargs) -> pd.DataFrame:
    """Stage 2 on CPUs, as a Ray task in the worker processes of the read and shuffle tasks
    (``ONE_TASK_POOL``): they have imported this module already, where an actor pool would start
    processes of its own after the shuffle (a daily job of the 505 histories on 2 CPUs: 10.9-11.7
    -> 9.7-10.4 s, ad-hoc A/B). The bundle is loaded once per process and attempt, as an actor
    would. Not for GPUs: Ray gives a GPU task a new process every call (``max_calls=1``)."""
    global _scorer
    key = (kwargs["run_uri"], kwargs["attempt"])
    if _scorer is None or _scorer[0] != key:
        _scorer = key, ScoreBlock(**kwargs)  # an earlier attempt's model is dropped
    return _scorer[1](table)


def load_score_config(config: str, overrides: list[str]) -> ScoreConfig:
    """The config with ``as_of: today`` resolved to the date in the exchange's time zone."""
    cfg = section_from_dict(ScoreConfig, apply_overrides(read_yaml(config), overrides), config)
    return dataclasses.replace(cfg, as_of=exchange_today(cfg.exchange_tz)) if cfg.as_of == "today" else cfg


def exchange_today(tz: str) -> str:
    """Today's date where the exchange is (a run at 01:00 UTC is still the previous evening in New York)."""
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(tz)).date().isoformat()


def run_id(cfg: ScoreConfig, model_sha: str, listing: list[tuple[str, int, float]]) -> str:
    key = {"model": model_sha, "input": listing, **{k: v for k, v in to_dict(cfg).items()
                                                     if k in _RUN_KEYS or (k in _RUN_KEYS_IF_SET and v is not None)}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(config: str, overrides: list[str]) -> int:
    cfg = load_score_config(config, overrides)
    if not cfg.model:
        raise ConfigError(["model: required; point it at a forecast bundle (<storage>/<run>/model)"], config)
    from rnnlib.bundle import open_bundle

    tracker = tracking.connect(cfg.tracking)  # None unless tracking.mlflow_uri is set
    bundle = open_bundle(cfg.model, task="forecast", endpoint_url=cfg.endpoint_url)  # fails before Ray
    # A models:// reference is resolved here, once: the actors load that version even if the alias
    # moves during the run.
    model_uri = bundle.registry["uri"] if bundle.registry else cfg.model
    source = cfg.input or str(sample_stocks_dir())
    listing = list_source(source, endpoint_url=cfg.endpoint_url)
    rid = run_id(cfg, bundle.meta["weights_sha256"], listing.key())
    day = cfg.as_of or exchange_today(cfg.exchange_tz)
    run_uri = publish.dated_run(cfg.output, day, rid)
    layout = input_layout(cfg, listing)
    print(f"score run {rid}: {cfg.mode}, {len(listing.entries)} file(s) from {source} "
          f"({layout} layout), model {cfg.model}"
          + (f" (version {bundle.registry['version']}: {storage.redact(model_uri)})" if bundle.registry else "")
          + (f"; {len(listing.skipped)} entries not read (listed in rejects.parquet)" if listing.skipped else ""))
    if publish.is_published(run_uri, cfg.endpoint_url):
        print(f"already published: {run_uri} (nothing to do)")
        _point_if_unpointed(cfg, day, rid)
        tracking.log_score(tracker, run_uri, cfg.endpoint_url, published=False)  # unless it was logged before
        return 0

    import ray

    from jobs.ray_setup import ONE_TASK_POOL, init_ray, no_false_cpu_alarm

    init_ray()
    attempt = uuid.uuid4().hex[:8]
    settings = {"mode": cfg.mode, "as_of": cfg.as_of, "backtest_days": cfg.backtest_days, "step": cfg.step,
                "batch_size": cfg.batch_size, "columns": cfg.columns, "delimiter": cfg.delimiter,
                "date_format": cfg.date_format}
    endpoint = storage.endpoint(cfg.endpoint_url)  # as the driver resolved it; never credentials
    start = time.perf_counter()
    # One block per batch of files, each block one call (batch_size=None): batches cut from
    # Ray's own blocks left a call of one or two files after most full ones.
    ds = ray.data.from_items([{"entry": e.to_json()} for e in listing.entries],
                             override_num_blocks=max(1, -(-len(listing.entries) // cfg.files_per_batch)))
    # A GPU pool starts with one actor and grows to `actors` as GPUs are free: a fixed pool larger
    # than the cluster's GPUs would wait for ever.
    pool = dict(min_size=1, max_size=cfg.actors) if cfg.gpu else dict(size=cfg.actors)
    actor_args = dict(compute=ray.data.ActorPoolStrategy(**pool), num_cpus=cfg.cpus_per_actor,
                      num_gpus=1 if cfg.gpu else 0)
    kwargs = {"model": model_uri, "run_uri": run_uri, "attempt": attempt, "endpoint_url": endpoint, "gpu": cfg.gpu}
    if layout == "per_ticker":
        ds = ds.map_batches(ScoreBatch, batch_size=None, batch_format="pandas",
                            fn_constructor_kwargs={**kwargs, "settings": settings}, **actor_args)
    else:
        files = [e.uri for e in listing.entries]
        one_pool = {"env_vars": ONE_TASK_POOL}  # these tasks share the shuffle's worker processes
        ds = ds.map_batches(read_rows_batch, batch_size=None, batch_format="pandas",
                            runtime_env=one_pool,
                            fn_kwargs={"files": files, "needed": source_columns(tuple(bundle.data["columns"])),
                                       "endpoint_url": endpoint, **{k: settings[k] for k in _READ_KEYS}})
        # One scoring call per shuffled block: about BLOCK_BYTES of input files each, so that a
        # call's fixed cost (validation, two Parquet parts, a summary) is spread over enough rows;
        # at least two per actor so that none waits on another's last block; at most 256.
        blocks = max(2 * cfg.actors, min(256, -(-sum(e.size for e in listing.entries) // BLOCK_BYTES)))
        # The shuffle runs to the end before the scoring actors start: its tasks need whole CPUs,
        # which a running actor pool can hold all of (a deadlock on a small cluster). The shuffled
        # blocks wait in Ray's object store (spread over the nodes, spilled to disk when full).
        ds = ds.repartition(blocks, keys=["ticker"])
        # Ray Data reserves a share of the CPUs for each operator of a streaming pipeline, which ran
        # these read tasks about one at a time on 2 CPUs and started the second scoring task a
        # second after the first. Each stage here is alone (read then shuffle is a barrier, and
        # scoring follows it), with nothing downstream to starve: the reservation is off.
        ds.context.op_resource_reservation_enabled = False
        with no_false_cpu_alarm():
            ds = ds.materialize()
        block_kwargs = {**kwargs, "settings": {**settings, "files": files}}
        if cfg.gpu:  # an actor keeps its GPU; a GPU task would start a new process every call
            ds = ds.map_batches(ScoreBlock, batch_size=None, batch_format="pyarrow",
                                fn_constructor_kwargs=block_kwargs, **actor_args)
        else:  # in the processes that read and shuffled (see score_block)
            ds = ds.map_batches(score_block, batch_size=None, batch_format="pyarrow", fn_kwargs=block_kwargs,
                                runtime_env=one_pool, concurrency=cfg.actors,
                                num_cpus=cfg.cpus_per_actor)
    summaries = ds.to_pandas()
    scored_s = time.perf_counter() - start
    twice = _scored_twice(summaries)
    if twice:
        raise UserError(f"{source}: ticker(s) {', '.join(twice[:5])} span more than one batch of files (their rows "
                        "are in several files); nothing was published. Rerun with input_layout=long")
    manifest, rejects = _manifest(cfg, rid, attempt, bundle, model_uri, source, listing, summaries, run_uri)
    if not publish.commit(run_uri, attempt, manifest, cfg.endpoint_url):
        print(f"another attempt published {run_uri} first; this attempt's files were removed")
        _point_if_unpointed(cfg, day, rid)
        tracking.log_score(tracker, run_uri, cfg.endpoint_url, published=False)
        return 0
    removed = publish.clean_unlisted(run_uri, cfg.endpoint_url)
    pointers = publish.point_latest(cfg.output, day, rid, cfg.endpoint_url)
    c = manifest["counts"]
    print(f"published {run_uri} in {scored_s:.1f}s: {c['series_scored']} series scored, "
          f"{c['series_rejected']} rejected, {c['forecast_rows']} forecast rows"
          + (f"; removed {len(removed)} file(s) of earlier failed attempts" if removed else ""))
    if len(rejects):
        for r in rejects[rejects.action == REJECT_SERIES].itertuples():
            print("  " + rejected_line(r.ticker, os.path.basename(str(r.file)), r.reason))
    print(f"latest: {', '.join(pointers)}\nverify: rnnjobs verify {run_uri}")
    tracking.log_score(tracker, run_uri, cfg.endpoint_url, published=True)
    return 0


def _point_if_unpointed(cfg: ScoreConfig, day: str, rid: str) -> None:
    """A published run whose date has no LATEST yet (the attempt that committed stopped before
    writing it) gets its pointers; a date whose LATEST names a newer run keeps it."""
    if not storage.exists(storage.join(cfg.output, f"as_of={day}", publish.LATEST), cfg.endpoint_url):
        publish.point_latest(cfg.output, day, rid, cfg.endpoint_url)


def input_layout(cfg: ScoreConfig, listing: Listing) -> str:
    """``cfg.input_layout``, with ``auto`` decided from the listing alone (no file is opened)."""
    if cfg.input_layout != "auto":
        return cfg.input_layout
    dated = re.compile(r"(19|20)\d\d([-_]?\d\d)")
    if any(e.partitions or dated.search(posixpath.basename(e.uri)) for e in listing.entries):
        return "long"
    return "per_ticker"


def _scored_twice(summaries: pd.DataFrame) -> list[str]:
    """Tickers scored in more than one batch (each series must be scored exactly once)."""
    seen = pd.Series([t for s in summaries["tickers"] for t in json.loads(s)], dtype=object)
    return sorted(seen[seen.duplicated()].unique())


def _manifest(cfg, rid, attempt, bundle, model_uri, source, listing, summaries,
              run_uri) -> tuple[dict, pd.DataFrame]:
    """The run's manifest and its rejects table (written as a part first)."""
    from rnnlib.bundle import versions

    files = [p for s in summaries["parts"] for p in json.loads(s)]
    rows = [r for s in summaries["rejects"] for r in json.loads(s)]
    rows += [dict(file=uri, rows=0, action=SKIP_FILE, reason=why) for uri, why in listing.skipped]
    rejects = pd.DataFrame(rows, columns=REJECT_COLUMNS).sort_values(["file", "ticker", "row"], na_position="first",
                                                                       ignore_index=True)  # same bytes every attempt
    files.append(publish.write_part(run_uri, "rejects.parquet", rejects, "rejects", cfg.endpoint_url))
    tot = {k: int(summaries[k].sum()) for k in ("rows_in", "rows_kept", "rows_rejected", "rows_after_as_of",
                                                 "series_in", "series_scored", "windows", "files")}
    counts = {**tot, "series_rejected": tot["series_in"] - tot["series_scored"],
              "forecast_rows": sum(f["rows"] for f in files if f["kind"] == "forecasts")}
    listing_sha = hashlib.sha256(json.dumps(listing.key()).encode()).hexdigest()
    return {"run_id": rid, "attempt": attempt, "created": datetime.now(timezone.utc).isoformat(),
            "mode": cfg.mode, "as_of": cfg.as_of,
            "model": model_block(bundle, model_uri),
            "input": {"uri": source, "files": len(listing.entries), "skipped": len(listing.skipped),
                      "listing_sha256": listing_sha},
            "counts": counts, "files": files, "config": to_dict(cfg), "versions": versions()}, rejects


def model_block(bundle, model_uri: str) -> dict:
    """The manifest's ``model``: the bundle scored (its URI, resolved), its weights' sha256 and data args,
    and for a registry reference the reference as given and the version it resolved to."""
    block = {"uri": storage.redact(model_uri), "weights_sha256": bundle.meta["weights_sha256"], **bundle.data}
    if bundle.registry:
        block["registry"] = {k: bundle.registry[k] for k in ("ref", "name", "version")}
    return block


def run_verify(uri: str, endpoint_url: str | None) -> int:
    run_uri = publish.resolve(uri, endpoint_url)
    if run_uri != uri.rstrip("/"):
        print(f"{uri} -> {run_uri}")
    v = publish.verify(run_uri, endpoint_url)
    if v.ok:
        print(f"{run_uri}: OK, {v.checked} file(s) match the manifest")
        return 0
    print(f"{run_uri}: {len(v.problems)} problem(s):", file=sys.stderr)
    for p in v.problems:
        print(f"  - {p}", file=sys.stderr)
    return 1
