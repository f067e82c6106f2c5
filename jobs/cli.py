"""The ``rnnjobs`` command. Each subcommand parses, builds, runs and reports; the logic
lives in rnnlib. A user's mistake (config, data, bundle) prints a message and exits 2."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import textwrap

from jobs.submit import COMMANDS as SUBMITTABLE
from jobs.submit import UNREACHABLE, Unreachable
from rnnlib.config import MLFLOW_CREDENTIALS
from rnnlib.errors import UserError
from rnnlib.storage import AWS_CHAIN, redact, refuse_credentials

EPILOG = """examples:
  rnnjobs demo                                      search, train, score, report on bundled data (local Ray)
  rnnjobs check jobs/configs/forecast-train.yaml    validate a config and its data, no training
  rnnjobs train jobs/configs/forecast-train.yaml train.epochs=2 scaling.workers=2 storage=/tmp/runs
  rnnjobs tune jobs/configs/forecast-tune.yaml tune.num_samples=6 train.epochs=2 storage=/tmp/tune
  rnnjobs generate --model outputs/runs/RUN/model --prompt "ROMEO:" --length 300 --temperature 0.7
  rnnjobs evaluate --model outputs/runs/RUN/model
  rnnjobs check jobs/configs/text-train.yaml data.path=corpus.txt model.cell=lstm
  rnnjobs submit --address http://HEAD:8265 train jobs/configs/forecast-train.yaml scaling.workers=4
  rnnjobs jobs list --address http://HEAD:8265
  rnnjobs models promote forecaster 3 --reason "beats v2"   then: rnnjobs score CONFIG model=models://forecaster@champion
  rnnjobs scorecard outputs/forecasts --histories data/stocks/
"""


def _generate(args) -> int:
    from pathlib import Path

    from jobs.generate import FLAGS, run

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():  # no YAML given, only overrides
        config, overrides = None, [config, *overrides]
    return run(config, overrides, {k: getattr(args, k) for k in FLAGS})


def _evaluate(args) -> int:
    from jobs.generate import run_evaluate

    return run_evaluate(args.model, args.text, args.seq_len, args.endpoint_url, args.device)


def _verify(args) -> int:
    from jobs.score import run_verify

    return run_verify(args.run, args.endpoint_url)


def _submit(args) -> int:
    from jobs.submit import submit

    return submit(args.address, args.job, args.config, list(args.overrides), wait=args.wait, includes=args.include)


def _jobs(args) -> int:
    from jobs.submit import jobs

    return jobs(args.address, args.action, args.id, follow_logs=args.follow)


def _report(args) -> int:
    from jobs.report import run

    return run(args.runs, args.out, args.tickers, args.endpoint_url)


def _models(args) -> int:
    from jobs.models import ACTIONS

    return ACTIONS[args.action](args)


def _expect(value: str) -> int | None:
    """``--expect N|none`` -> N, or None (the alias must be unset)."""
    if value.lower() == "none":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: give the version the alias points at now, or none if it is unset")


MODELS_EPILOG = """references: models://NAME@ALIAS (where the alias points when a job starts) or models://NAME/VERSION
(one version, for good) work wherever a model path does (score model=, generate/evaluate --model,
report), resolved against $RNNJOBS_REGISTRY.

layout: <registry>/<name>/<n>/model/ (the bundle), <n>/version.json (written last), and
<name>/aliases/<alias>/<seq>.json (one file per move, created only if absent).

examples:
  export RNNJOBS_REGISTRY=s3://my-bucket/models
  rnnjobs models register forecaster outputs/runs/RUN/model --data-json data-fingerprint.json
  rnnjobs models list forecaster
  rnnjobs models promote forecaster 3 --expect 2 --reason "rMAE 0.91 vs 0.95 on 2018 backtest" --figure rmae=0.91
  rnnjobs models show forecaster@champion
  rnnjobs score jobs/configs/forecast-score.yaml model=models://forecaster@champion
"""


def _models_parser(sub) -> None:
    from rnnlib.config import GateConfig

    m = sub.add_parser("models", help="a model registry on the object store: register, list, show, promote",
                       description=textwrap.fill(
                           "Versions of each model under <registry>/<name>/<n>/ and aliases such as champion, "
                           "moved with conditional writes (like _SUCCESS), with their history. No server: the "
                           "registry is a local folder or an s3:// prefix.", 100),
                       epilog=MODELS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = m.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help, description=textwrap.fill(description, 100),
                               epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        a.add_argument("--registry", help="the registry: local folder or s3://bucket/prefix "
                                          "(default: $RNNJOBS_REGISTRY)")
        _endpoint_flag(a)
        a.set_defaults(func=_models)
        return a

    r = action("register", "copy a bundle into the registry as the next version of NAME",
               "Check the bundle (it must load), take the next version number (1, 2, ...; two registers "
               "at once never share one), copy weights.pt and bundle.json to <registry>/NAME/<n>/model/, "
               "then write version.json (source, task, weights sha256, the bundle's final metrics, --data-json).",
               "rnnjobs models register forecaster outputs/runs/RUN/model --data-json fingerprint.json")
    r.add_argument("name", help="model name: letters, digits, '-', '_', '.'")
    r.add_argument("bundle", help="bundle folder or s3:// URI (<storage>/<run>/model, from rnnjobs train)")
    r.add_argument("--data-json", dest="data_json", metavar="FILE",
                   help="a JSON object recorded with the version as is (e.g. the training data's fingerprint)")

    ls = action("list", "the models, or one model's versions with metrics and aliases",
                "Without NAME: every model with its version count and aliases. With NAME: each version with "
                "when it was registered, its weights' sha256, its key metrics and the aliases pointing at it; "
                "a number claimed by a register that never finished is marked incomplete.",
                "rnnjobs models list forecaster")
    ls.add_argument("name", nargs="?", help="a model name")

    sh = action("show", "a version's version.json, and an alias's history",
                "NAME/VERSION: that version. NAME@ALIAS: the version the alias points at and every move of "
                "the alias (when, from which version, why, the figures recorded). NAME: every alias's history.",
                "rnnjobs models show forecaster@champion")
    sh.add_argument("ref", metavar="NAME[@ALIAS|/VERSION]", help="e.g. forecaster@champion or forecaster/3")

    p = action("promote", "point an alias (default: champion) at a version, atomically",
               "Record a move of NAME@ALIAS to VERSION (created only if absent: a concurrent promote makes "
               "this one fail, never overwrite). With --expect, refuse if the alias no longer points where "
               "you compared against. Exit 2 on a conflict, nothing changed.",
               "rnnjobs models promote forecaster 3 --expect 2 --reason \"beats v2 on the 2018 backtest\" "
               "--figure rmae=0.91 --figure rmae_v2=0.95")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, help="the version to point the alias at")
    p.add_argument("--alias", default="champion", help="default: %(default)s")
    p.add_argument("--expect", type=_expect, default=argparse.SUPPRESS, metavar="N|none",
                   help="the version the alias points at now as you saw it ('none': unset); refuse if it moved")
    p.add_argument("--reason", help="why (recorded in the alias's history)")
    p.add_argument("--figure", action="append", metavar="KEY=VALUE",
                   help="a number that justified the move, recorded with it; repeatable")
    p.add_argument("--figures-json", dest="figures_json", metavar="FILE", help="the figures as a JSON object")
    _mlflow_flags(p, "the move")

    g = action("gate", "backtest a version against the champion and persistence; promote it if not worse",
               "Backtest VERSION, NAME@ALIAS (if set) and persistence on the same points: every origin in the "
               "last --days trading days of the histories, every step. VERSION is promoted (moved only if the "
               "alias still points at the champion compared against) when neither its rMAE nor its pinball "
               "loss is worse than the champion's or persistence's beyond the tolerances (relative: 0.02 = 2%%). "
               "The decision and every side's figures are written to <registry>/NAME/VERSION/gates/ and "
               "printed. Exit 0 when promoted (or it would be, with --dry-run), 1 when refused.",
               "rnnjobs models gate forecaster 4 --histories s3://my-bucket/histories/ --days 60")
    g.add_argument("name", help="model name")
    g.add_argument("version", type=int, help="the candidate version")
    g.add_argument("--histories", required=True, help="histories to backtest on: file, folder or s3:// prefix")
    g.add_argument("--alias", default="champion", help="the alias to compare against and move (default: %(default)s)")
    for f in dataclasses.fields(GateConfig):  # one flag per gate setting, with the config's help
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_positive if f.type == "int" else float,
                       default=f.default, help=f"{f.metadata['help'].replace('%', '%%')} (default: %(default)s)")
    g.add_argument("--dry-run", dest="promote", action="store_false", help="decide and record, but move nothing")
    _mlflow_flags(g, "the decision and its figures")


def _mlflow_flags(a: argparse.ArgumentParser, what: str) -> None:
    a.add_argument("--mlflow-uri", dest="mlflow_uri", metavar="URI",
                   help=f"also log {what} as a run to this MLflow tracking store (e.g. sqlite:///path/mlflow.db or "
                        f"http://HOST:5000; needs the mlflow extra: pip install 'rnnjobs[mlflow]')")
    a.add_argument("--mlflow-experiment", dest="mlflow_experiment", metavar="NAME",
                   help="the MLflow experiment (default: rnnjobs, as tracking.experiment of the jobs)")


def _scorecard(args) -> int:
    from jobs.scorecard import run

    return run(args.output, args.histories, args.out, args.endpoint_url, args.window, args.min_points)


def _config(args) -> int:
    from rnnlib.config import reference

    print(reference(args.job))
    return 0


def _demo(args) -> int:
    from jobs.demo import run

    return run(out=args.out, quick=args.quick)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def _device_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default,
                   help="where the model runs (default: auto, the GPU when one is visible)")


def _endpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint")


def _config_command(sub, name: str, module: str, help: str, description: str, example: str,
                    overrides_help: str) -> None:
    """A subcommand taking CONFIG and key=value overrides, run by ``jobs.<module>.run``."""
    def handler(args) -> int:
        return importlib.import_module(f"jobs.{module}").run(args.config, args.overrides)

    c = sub.add_parser(name, help=help, description=description)
    c.add_argument("config", help=f"YAML, e.g. {example}")
    c.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    c.set_defaults(func=handler)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnjobs", description="Train and score RNN/LSTM/GRU models on Ray.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _config_command(sub, "check", "check", "validate a job config and its data (no training)",
                    "Load CONFIG with overrides, validate it, load the data it names and print what would "
                    "be used and what was rejected, with reasons.",
                    "jobs/configs/forecast-train.yaml", "dotted overrides, e.g. model.cell=gru")
    _config_command(sub, "train", "train", "train a model with Ray Train (local Ray, or the cluster at RAY_ADDRESS)",
                    "Train per CONFIG on Ray Train workers; checkpoints every epoch to storage; rerunning the "
                    "same command resumes a crashed run. The best model is exported to <storage>/<name>/model/.",
                    "jobs/configs/forecast-train.yaml",
                    "dotted overrides, e.g. train.epochs=2 scaling.workers=2 storage=/tmp/runs")
    _config_command(sub, "tune", "tune", "search cell type, window size and the rest with Ray Tune (ASHA)",
                    "Run a Ray Tune search over the keys in CONFIG's search section; write a results table, "
                    "best.yaml (a train config) and the best model under <storage>/<name>/. Rerunning the same "
                    "command resumes an interrupted search.",
                    "jobs/configs/forecast-tune.yaml",
                    "e.g. tune.num_samples=6 train.epochs=2 storage=/tmp/tune "
                    "'search.model.cell={choice: [lstm, gru]}'")
    _config_command(sub, "score", "score", "forecast or backtest many histories with Ray Data, publish atomically",
                    "Score every history under input= with the bundle at model=, writing Parquet under "
                    "<output>/as_of=<date>/run=<id>/ with a manifest and _SUCCESS, then point "
                    "<output>/LATEST and <output>/as_of=<date>/LATEST at it. Rerunning a published run does nothing.",
                    "jobs/configs/forecast-score.yaml",
                    "e.g. input=DIR model=BUNDLE_DIR output=OUT_DIR mode=backtest as_of=2018-01-31")

    v = sub.add_parser("verify", help="check a published score run against its manifest",
                       description="Read _SUCCESS, then the manifest it commits, then check every listed "
                                   "file's bytes, sha256 and rows. Exit 0 if all match, 1 with a report.")
    v.add_argument("run", help="a run folder (<output>/as_of=<date>/run=<id>), or a LATEST pointer or the folder "
                               "holding one (<output>, <output>/as_of=<date>): the run it names")
    _endpoint_flag(v)
    v.set_defaults(func=_verify)

    g = sub.add_parser("generate", help="generate text from a trained char model",
                       description="Prime the model with the prompt once, then carry the hidden state: "
                                   "each new character costs the same. Characters stream to stdout. "
                                   "Settings come from an optional YAML, key=value overrides, then flags.")
    g.add_argument("config", nargs="?", help="optional YAML with the keys below")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. temperature=0.5")
    g.add_argument("--model", help="text bundle folder, s3:// URI (<storage>/<run>/model) or models://NAME@ALIAS")
    g.add_argument("--prompt", help="text to continue (default: empty)")
    g.add_argument("--length", type=int, help="characters per sample (default 500)")
    g.add_argument("--temperature", type=float, help="0 = greedy; default 0.8")
    g.add_argument("--top-k", dest="top_k", type=int, help="keep the k most likely characters")
    g.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling threshold in (0, 1]")
    g.add_argument("--seed", type=int, help="same seed, same text (default 0)")
    g.add_argument("--samples", type=int, help="samples generated as one batch (default 1)")
    g.add_argument("--out", help="also write the samples to this file or s3:// URI")
    g.add_argument("--drop-unknown", dest="drop_unknown", action="store_const", const=True,
                   help="drop prompt characters outside the vocabulary (with a warning)")
    _device_flag(g)
    _endpoint_flag(g)
    g.set_defaults(func=_generate)

    e = sub.add_parser("evaluate", help="loss of a char model on a text (nats, bits per char, perplexity)",
                       description="Evaluate a text bundle on a UTF-8 file, or on the held-out split of "
                                   "the corpus it was trained on.")
    e.add_argument("--model", required=True, help="text bundle folder, s3:// URI or models://NAME@ALIAS")
    e.add_argument("--text", help="UTF-8 text file (default: the bundle's held-out split)")
    e.add_argument("--seq-len", dest="seq_len", type=int, help="chunk length (default: the training seq_len)")
    _device_flag(e, default="auto")
    _endpoint_flag(e)
    e.set_defaults(func=_evaluate)

    address_help = "Ray Job API of the cluster, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    s = sub.add_parser("submit", help="run train, tune, score or generate on a Ray cluster",
                       description="Check CONFIG here, then submit `rnnjobs JOB CONFIG key=value...` to the "
                                   "cluster. The working_dir uploaded is an allowlist, printed before it goes up: "
                                   "rnnlib/, jobs/, pyproject.toml, constraints.txt, CONFIG and any --include "
                                   "paths; never .env files, keys, tokens or credentials. The submission id is derived "
                                   "from the command and config: submitting the same thing twice reports the "
                                   "existing job. With RAY_AUTH_MODE=token, RAY_AUTH_TOKEN (or "
                                   "RAY_AUTH_TOKEN_PATH) is sent along.",
                       epilog="exit codes: 0 succeeded, 1 failed, 130 stopped, 2 bad config, 3 cluster unreachable")
    s.add_argument("--address", help=address_help)
    s.add_argument("--no-wait", dest="wait", action="store_false", help="print the job id and return")
    s.add_argument("--follow", dest="wait", action="store_true", help="stream the logs until the job ends (default)")
    s.add_argument("--include", action="append", default=[], metavar="PATH",
                   help="also upload this file or folder of the project (e.g. a small data folder a relative "
                        "data.path names); repeatable")
    s.add_argument("job", choices=SUBMITTABLE, help="the job to run")
    s.add_argument("config", help="YAML inside this project, e.g. jobs/configs/forecast-score.yaml")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="as for the job itself")
    s.set_defaults(func=_submit, wait=True)

    j = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster",
                       description="The rest of a submitted job's lifecycle, through the Ray Job API.",
                       epilog="examples:\n  rnnjobs jobs list\n  rnnjobs jobs logs ID --follow\n"
                              "  rnnjobs jobs stop ID", formatter_class=argparse.RawDescriptionHelpFormatter)
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("id", nargs="?", help="submission id (from submit or jobs list)")
    j.add_argument("--address", help=address_help)
    j.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    j.set_defaults(func=_jobs)

    rp = sub.add_parser("report", help="report.md with plots for a search, a training run and/or a score run",
                        description="Write report.md and PNG plots: the search's trials by cell and window, loss "
                                    "curves, test metrics and a backtest against persistence, forecasts with "
                                    "their band (the outer quantiles) over the recent history.")
    rp.add_argument("runs", nargs="+", metavar="RUN",
                    help="<storage>/<name> of a tune or train run, or a score run: <output>/as_of=<date>/run=<id>, "
                         "or <output> (its LATEST run)")
    rp.add_argument("--out", help="folder for report.md and the PNGs (default: RUN/report)")
    rp.add_argument("--tickers", type=int, default=4, help="tickers in the forecast plots (default: %(default)s)")
    _endpoint_flag(rp)
    rp.set_defaults(func=_report)

    _models_parser(sub)
    sc = sub.add_parser(
        "scorecard", help="track record: published forecasts against the prices that arrived later",
        description="Join the forecasts of every date with a LATEST pointer under OUTPUT (forecast runs; backtests\n"
                    "are skipped with a note) with the prices that arrived later, and write per as_of date and per\n"
                    "ticker rMAE, band coverage and pinball loss next to persistence (the last close).\n\n"
                    "Step k of a forecast is realized by the k-th trading row after its as_of row in the history\n"
                    "(holidays are no rows); until that row arrives the point is pending (counted, not scored).\n"
                    "Writes by_date.parquet, by_date_step.parquet, by_ticker.parquet, points.parquet,\n"
                    "scorecard.png (rolling figures) and report.md.",
        epilog="examples:\n"
               "  rnnjobs scorecard outputs/forecasts --histories data/stocks/\n"
               "  rnnjobs scorecard s3://bucket/forecasts --histories s3://bucket/histories/ "
               "--out s3://bucket/scorecard",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("output", metavar="OUTPUT",
                    help="a score output (output= of rnnjobs score): holds as_of=<date>/LATEST and the runs")
    sc.add_argument("--histories", required=True, metavar="URI",
                    help="the price histories, later rows included: a file, folder or s3:// prefix in any "
                         "layout rnnjobs score reads as input")
    sc.add_argument("--out", metavar="URI", help="folder or s3:// prefix for the outputs (default: OUTPUT/scorecard)")
    sc.add_argument("--window", type=_positive, default=20,
                    help="dates in the rolling figures of scorecard.png (default: %(default)s)")
    sc.add_argument("--min-points", dest="min_points", type=_positive, default=20,
                    help="scored points a ticker needs to be ranked best or worst in report.md "
                         "(default: %(default)s)")
    _endpoint_flag(sc)
    sc.set_defaults(func=_scorecard)

    from rnnlib.config import REFERENCE_JOBS

    cf = sub.add_parser("config", help="print a job's config keys with defaults and help",
                        description="Print every key of a job's config with its default, what it does, and "
                                    "its allowed values: a starting point for a YAML, generated from the code.")
    cf.add_argument("action", choices=["show"])
    cf.add_argument("job", choices=REFERENCE_JOBS)
    cf.set_defaults(func=_config)

    d = sub.add_parser("demo", help="the whole pipeline on a local Ray and the bundled data (about 4 minutes)",
                       description="On a local Ray with a local folder as the object store: search 3 cells x 2 "
                                   "windows (ASHA), train the best with 2 workers, score and publish every "
                                   "bundled ticker, verify, write a report with plots, then train a small char "
                                   "model and print a sample. Rerunning reuses what is done.")
    d.add_argument("--out", default="outputs/demo", help="folder for everything it writes (default: %(default)s)")
    d.add_argument("--quick", action="store_true", help="tiny settings: the same steps in about a minute")
    d.set_defaults(func=_demo)
    return p


POSITIONAL = ("config", "run", "runs", "job", "action", "id", "name", "bundle", "ref", "version", "output")
RAY_AUTH = "the Ray Job API takes a token instead: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"


def refuse_credential_flags(args: argparse.Namespace) -> None:
    """A URI given as a flag or argument with user info in it is refused before anything runs
    (exit 2). Config keys and key=value overrides are checked as the config loads (rnnlib.config)."""
    for name, value in vars(args).items():
        if name == "overrides":
            continue
        key = name if name in POSITIONAL else "--" + name.replace("_", "-")
        fix = {"address": RAY_AUTH, "mlflow_uri": MLFLOW_CREDENTIALS}.get(name, AWS_CHAIN)
        for v in value if isinstance(value, list) else [value]:
            refuse_credentials(v, key, fix)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the flags: `generate --model M temperature=0.5`
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(redact(f"unrecognized arguments: {' '.join(bad or extra)}"))
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        refuse_credential_flags(args)
        return int(args.func(args) or 0)
    except Unreachable as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return UNREACHABLE
    except UserError as e:  # messages quote URIs: never with user info in them
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rnnjobs config show ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
