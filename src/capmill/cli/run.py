"""`capmill run CONFIG`: run a pipeline."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the pipeline a config describes")
    p.add_argument("config", help="run config (YAML), or a packaged recipe: NAME or recipes/NAME.yaml (see `capmill recipes list`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set executor.batch_size=32 (repeatable)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="process only the first N samples (a later run without it extends the output)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, the models (offline?) and the output directory, list the shards; "
                        "load and write nothing")
    p.add_argument("--retry-errors", action="store_true",
                   help="also redo the samples of committed shards that failed transiently, rewriting those shards")
    p.add_argument("--force", action="store_true", help="discard results of a different config in the output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.config import load_config
    from capmill.recipes import resolve_config_path
    from capmill.run import run

    from capmill.cli.main import EXIT_USAGE
    from capmill.run import dry_run_report

    config = load_config(resolve_config_path(args.config), args.overrides)
    if args.dry_run:
        report = dry_run_report(config, force=args.force, limit=args.limit, retry_errors=args.retry_errors)
        print(report.render())
        return EXIT_USAGE if report.refused else EXIT_FAILED if report.models_missing else EXIT_OK
    summary = run(config, force=args.force, limit=args.limit, retry_errors=args.retry_errors,
                  progress=not args.no_progress)
    print(summary.render(), file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_FAILED
