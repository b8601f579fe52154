"""An input config for a path given on the command line (`capmill inspect`, `capmill eval`),
guessed from what the path is."""

from __future__ import annotations

import os
from typing import Any

from capmill.errors import ConfigError


def guess_input(path: str, kind: str | None = None) -> dict:
    """An input config for `path`, guessed from what it is."""
    if kind is None:
        if os.path.isdir(path):
            kind = "capmill" if os.path.exists(os.path.join(path, "_run.json")) else "folder"
        elif path.endswith((".tar", ".tar.gz", ".tgz")) or path.endswith("}.tar"):
            kind = "webdataset"
        elif path.endswith(".parquet"):
            kind = "parquet"
        elif path.endswith((".jsonl", ".json")):
            kind = "jsonl"
        else:
            raise ConfigError(f"cannot tell what {path!r} is; pass --type")
    return {"type": kind, "path": path}


def input_for(path: str, kind: str | None = None) -> Any:
    """The validated input config for `path` (see `guess_input`)."""
    from pydantic import TypeAdapter

    from capmill.config import InputSpec

    return TypeAdapter(InputSpec).validate_python(guess_input(path, kind))
