"""`capmill run CONFIG` / `capmill run --recipe NAME`: run a pipeline."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the pipeline a config describes")
    p.add_argument("config", nargs="?", help="run config (YAML)")
    p.add_argument("--recipe", metavar="NAME", help="run a packaged recipe instead (see `capmill recipes list`)")
    p.add_argument("--models", metavar="DIR", help="replace every model by the tiny model of its role from DIR, "
                   "written by `python -m capmill.testing.tiny_models DIR` (a smoke test without weights)")
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
    p.add_argument("--cooperate", action="store_true",
                   help="share the output with other runs started with --cooperate (one per GPU, a Slurm "
                        "array): each claims shards before processing them, each shard is processed once")
    p.add_argument("--shard-index", type=int, default=None, metavar="I",
                   help="with --num-shards N: process only the input shards at positions I, I+N, I+2N, … "
                        "(a static split; implies --cooperate)")
    p.add_argument("--num-shards", type=int, default=None, metavar="N", help="the number of parts of --shard-index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout (the table still goes to stderr)")
    p.set_defaults(handler=main)


def load_run_config(args: argparse.Namespace, command: str = "run"):
    """The RunConfig of a command taking CONFIG or --recipe NAME, --set and --models."""
    from capmill.config import apply_overrides, parse_config
    from capmill.recipes import config_tree

    tree = apply_overrides(config_tree(args.config, args.recipe, command), args.overrides)
    if getattr(args, "models", None):
        from capmill.testing.smoke import with_tiny_models

        tree = with_tiny_models(tree, args.models)
    return parse_config(tree)


def main(args: argparse.Namespace) -> int:
    from capmill.api.pipeline import Pipeline
    from capmill.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
    from capmill.run import Share, dry_run_report

    config = load_run_config(args)
    share = Share(args.cooperate, args.shard_index, args.num_shards)
    if args.dry_run:
        report = dry_run_report(config, force=args.force, limit=args.limit, retry_errors=args.retry_errors,
                                share=share)
        print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else report.render())
        return EXIT_USAGE if report.refused else EXIT_FAILED if report.models_missing else EXIT_OK
    summary = Pipeline.from_config(config).run(force=args.force, limit=args.limit, retry_errors=args.retry_errors,
                                               progress=not args.no_progress, cooperate=args.cooperate,
                                               shard_index=args.shard_index, num_shards=args.num_shards)
    print(summary.render(), file=sys.stderr)
    if args.models:
        print(f"smoke test: every model was replaced by a tiny random one from {args.models}; the captions are "
              f"meaningless and the degenerate-result checks were off", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    return EXIT_OK if summary.ok else EXIT_FAILED
