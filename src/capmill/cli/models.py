"""`capmill models CONFIG`: every model a config will load, where it comes from, and whether it
is available offline. Exits 1 when one is not, so it can guard a run on a machine without network."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models a config will load and whether they are available offline")
    p.add_argument("config", nargs="?", help="run config (YAML)")
    p.add_argument("--recipe", metavar="NAME", help="a packaged recipe instead (see `capmill recipes list`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.set_defaults(handler=main)


def rows(config) -> list[tuple[str, str, str, str, bool | None]]:
    """(stage, backend type, model, where from, offline?) for every model of every stage."""
    from capmill.backends.availability import config_models

    return config_models(config)


def main(args: argparse.Namespace) -> int:
    from capmill.backends.availability import MISSING, fetch_hint, missing_folder
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.cli.run import load_run_config

    config = load_run_config(args, "models")
    table = rows(config)
    if not table:
        print("this config loads no models")
        return EXIT_OK
    header = ("stage", "backend", "model", "from", "offline")
    cells = [header] + [(s, b, m, w, {True: "yes", False: "NO", None: "n/a"}[o]) for s, b, m, w, o in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    missing = [(m, where) for _, _, m, where, offline in table if offline is False]
    for model, where in missing:
        print("\n" + (missing_folder(model) if where == MISSING else f"{model}: not available offline; {fetch_hint(model)}"))
    return EXIT_FAILED if missing else EXIT_OK
