"""An input config for a path given on the command line (`capmill inspect`, `capmill eval`),
guessed from what the path is."""

from __future__ import annotations

import os
from typing import Any

from capmill.errors import ConfigError

KINDS = ["capmill", "webdataset", "parquet", "jsonl", "folder", "hf"]


def _folder_kind(path: str) -> str:
    """What a folder holds: a run output, a saved Hugging Face dataset, tar shards (img2dataset
    writes a parquet of statuses beside them: the tars hold the data), parquet files, or images."""
    if os.path.exists(os.path.join(path, "_run.json")):
        return "capmill"
    if os.path.exists(os.path.join(path, "dataset_info.json")) and (
            os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))):
        return "hf"
    names = os.listdir(path)
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    return "folder"


def _remote_run_output(path: str) -> bool:
    """An object store URL (s3://, gs://) of a capmill output, reached with the environment's
    credentials and endpoint."""
    if "://" not in path or path.startswith("file://"):
        return False
    from capmill.writers.store import store_for

    try:
        return store_for(path).exists(path.rstrip("/") + "/_run.json")
    except Exception:  # no such file system installed, unreachable: let the reader say why
        return False


def guess_input(path: str, kind: str | None = None) -> dict:
    """An input config for `path`, guessed from what it is. A folder of tar or parquet files
    reads all of them (`DIR/*.tar`, `DIR/*.parquet`)."""
    is_dir = os.path.isdir(path)
    if kind is None and _remote_run_output(path):
        kind = "capmill"
    if kind is None:
        if is_dir:
            kind = _folder_kind(path)
        elif path.endswith((".tar", ".tar.gz", ".tgz")) or path.endswith("}.tar"):
            kind = "webdataset"
        elif path.endswith(".parquet"):
            kind = "parquet"
        elif path.endswith((".jsonl", ".json")):
            kind = "jsonl"
        else:
            raise ConfigError(f"cannot tell what {path!r} is; pass --type")
    if is_dir and kind in ("webdataset", "parquet"):
        path = os.path.join(path, "*.tar" if kind == "webdataset" else "*.parquet")
    return {"type": kind, "path": path}


def input_for(path: str, kind: str | None = None) -> Any:
    """The validated input config for `path` (see `guess_input`)."""
    from pydantic import TypeAdapter

    from capmill.config import InputSpec

    return TypeAdapter(InputSpec).validate_python(guess_input(path, kind))
