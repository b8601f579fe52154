"""`capmill models CONFIG`: every model a config will load, where it comes from, and whether it
is available offline. Exits 1 when one is not, so it can guard a run on a machine without network."""

from __future__ import annotations

import argparse

def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models a config will load and whether they are available offline")
    p.add_argument("config", help="run config (YAML) or a packaged recipe name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.set_defaults(handler=main)


def rows(config) -> list[tuple[str, str, str, str, bool | None]]:
    """(stage, backend type, model, where from, offline?) for every model of every stage."""
    from capmill.backends.availability import config_models

    return config_models(config)


def main(args: argparse.Namespace) -> int:
    from capmill.backends.availability import fetch_hint
    from capmill.cli.main import EXIT_FAILED, EXIT_OK
    from capmill.config import load_config
    from capmill.recipes import resolve_config_path

    config = load_config(resolve_config_path(args.config), args.overrides)
    table = rows(config)
    if not table:
        print("this config loads no models")
        return EXIT_OK
    header = ("stage", "backend", "model", "from", "offline")
    cells = [header] + [(s, b, m, w, {True: "yes", False: "NO", None: "n/a"}[o]) for s, b, m, w, o in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    missing = [m for _, _, m, _, offline in table if offline is False]
    for model in missing:
        print(f"\n{model}: not available offline; {fetch_hint(model)}")
    return EXIT_FAILED if missing else EXIT_OK
