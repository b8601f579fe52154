"""`capmill` command line: one module per subcommand, each with `add_parser` and `main`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import import_module

from capmill.errors import CircuitOpenError, ConfigError, OutputAccessError, OutputConflictError, SetupError

# Subcommand name → module under capmill.cli. Modules import lazily so `capmill --help` is fast.
COMMANDS = {
    "run": "run",
    "inspect": "inspect",
    "eval": "eval",
    "report": "report",
    "models": "models",
    "export": "export",
    "recipes": "recipes",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from capmill import __version__

    parser = argparse.ArgumentParser(prog="capmill", description="Recaption image-text data for training multimodal models.")
    parser.add_argument("--version", action="version", version=f"capmill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        import_module(f"capmill.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ConfigError, OutputConflictError, OutputAccessError, SetupError, CircuitOpenError) as e:
        print(f"capmill: error: {e}", file=sys.stderr)
        return EXIT_FAILED if isinstance(e, (SetupError, CircuitOpenError)) else EXIT_USAGE
    except KeyboardInterrupt:
        print("capmill: interrupted; committed shards are kept, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read the output stopped early (`capmill inspect out | head`): not a failure.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
