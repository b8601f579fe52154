"""`capmill run CONFIG`: run a pipeline."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the pipeline a config describes")
    p.add_argument("config", help="run config (YAML), or a packaged recipe: NAME or recipes/NAME.yaml (see `capmill recipes list`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set executor.batch_size=32 (repeatable)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="process only the first N samples")
    p.add_argument("--dry-run", action="store_true", help="validate the config and list the shards; write nothing")
    p.add_argument("--force", action="store_true", help="discard results of a different config in the output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout (the table still goes to stderr)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from capmill.api.pipeline import Pipeline
    from capmill.cli.main import EXIT_FAILED, EXIT_OK

    pipeline = Pipeline.from_config(args.config, set=args.overrides)
    config = pipeline.config
    summary = pipeline.run(force=args.force, limit=args.limit, dry_run=args.dry_run, progress=not args.no_progress)
    if args.dry_run:
        if args.json:
            print(json.dumps({"dry_run": True, "shards_total": summary.shards_total, "input": config.input.type,
                              "stages": len(config.stages), "output": config.output.path}))
        else:
            print(f"config OK: {summary.shards_total} shard(s) to read from {config.input.type} input, "
                  f"{len(config.stages)} stage(s), output {config.output.path}")
        return EXIT_OK
    print(summary.render(), file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    return EXIT_OK if summary.ok else EXIT_FAILED
