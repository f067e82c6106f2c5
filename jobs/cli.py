"""The ``rnnjobs`` command. Each subcommand parses, builds, runs and reports; the logic
lives in rnnlib. A user's mistake (config, data, bundle) prints a message and exits 2."""

from __future__ import annotations

import argparse
import sys

from rnnlib.errors import UserError

EPILOG = """examples:
  rnnjobs demo                                      train a forecaster and a char model on bundled data
  rnnjobs check jobs/configs/forecast-train.yaml    validate a config and its data, no training
  rnnjobs train jobs/configs/forecast-train.yaml train.epochs=2 scaling.workers=2 storage=/tmp/runs
  rnnjobs check jobs/configs/text-train.yaml data.path=corpus.txt model.cell=lstm
"""


def _check(args) -> int:
    from jobs.check import run

    return run(args.config, args.overrides)


def _train(args) -> int:
    from jobs.train import run

    return run(args.config, args.overrides)


def _demo(args) -> int:
    from jobs.demo import run

    return run(out=args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnjobs", description="Train and score RNN/LSTM/GRU models on Ray.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate a job config and its data (no training)",
                       description="Load CONFIG with overrides, validate it, load the data it names and "
                                   "print what would be used and what was rejected, with reasons.")
    c.add_argument("config", help="job YAML, e.g. jobs/configs/forecast-train.yaml")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.cell=gru")
    c.set_defaults(func=_check)

    t = sub.add_parser("train", help="train a model with Ray Train (local Ray, or the cluster at RAY_ADDRESS)",
                       description="Train per CONFIG on Ray Train workers; checkpoints every epoch to "
                                   "storage; rerunning the same command resumes a crashed run. The best "
                                   "model is exported to <storage>/<name>/model/.")
    t.add_argument("config", help="job YAML, e.g. jobs/configs/forecast-train.yaml")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.epochs=2 scaling.workers=2 storage=/tmp/runs")
    t.set_defaults(func=_train)

    d = sub.add_parser("demo", help="train a small forecaster and char model on the bundled data",
                       description="In-process demo on the bundled sample: a forecaster against the "
                                   "persistence baseline, then a char model and a text sample.")
    d.add_argument("--out", default="outputs/demo", help="folder for the model bundles (default: %(default)s)")
    d.add_argument("--quick", action="store_true", help="a few seconds instead of about two minutes")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
