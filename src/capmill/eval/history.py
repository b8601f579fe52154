"""`OUT/_eval.json`: every evaluation of a run output, kept side by side.

    {"evaluations": [{"fields": [...], "references": {"path", "sha256"} | null,
                      "scorer": MODEL | null, "scorer_id": DIGEST | null, "limit": N | null, "metrics": {field: {metric: value}},
                      "notes": [...], "samples": N, "created": ..., "run_config_hash": ..., ...}, ...]}

An evaluation is identified by its fields, its references (by content), its scorer (by its
whole config: `scorer_id`) and its `--limit`: evaluating the same again replaces that entry, anything else is added, so comparing
fields, reference sets or scorers over time never overwrites an earlier figure. The file of
earlier versions (one field → metric → value mapping) is read as one entry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import Any

EVAL_FILE = "_eval.json"


def references_identity(path: str | None) -> dict[str, str] | None:
    """Where the references came from and a digest of their content (a file edited in place is
    another reference set)."""
    if path is None:
        return None
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"path": os.path.abspath(path), "sha256": digest}


def entry_key(entry: dict[str, Any]) -> tuple:
    refs = entry.get("references") or {}
    scorer = entry.get("scorer_id") or entry.get("scorer")  # the scorer's whole config, not only its model
    return (tuple(sorted(entry.get("fields") or [])), refs.get("sha256"), scorer, entry.get("limit"))


def load(out_dir: str) -> list[dict[str, Any]]:
    if "://" in out_dir:  # an output on an object store
        from capmill.outputdir import OutputDir

        try:
            data = OutputDir(out_dir).store.read_json(os.path.join(out_dir, EVAL_FILE))
        except FileNotFoundError:
            return []
        return _entries(data)
    path = os.path.join(out_dir, EVAL_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return _entries(data)


def _entries(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("evaluations"), list):
        return data["evaluations"]
    if isinstance(data, dict):  # the single-result file of earlier versions
        return [{"fields": sorted(data), "references": None, "scorer": None, "limit": None, "metrics": data,
                 "notes": ["written by an earlier capmill version: references and scorer not recorded"]}]
    return []


def record(out_dir: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Add `entry` (replacing one with the same identity) and write the file atomically."""
    entry = {**entry, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    key = entry_key(entry)
    entries = [e for e in load(out_dir) if entry_key(e) != key] + [entry]
    path = os.path.join(out_dir, EVAL_FILE)
    if "://" in out_dir:  # one PUT: whole or not at all
        from capmill.outputdir import OutputDir

        out = OutputDir(out_dir)
        out.store.write_bytes(path, (json.dumps({"evaluations": entries}, indent=2, ensure_ascii=False,
                                                allow_nan=False) + "\n").encode("utf-8"))
        return entries
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"evaluations": entries}, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return entries
