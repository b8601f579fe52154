"""`OUT/_eval.json`: every evaluation of a run output, kept side by side.

    {"evaluations": [{"fields": [...], "references": {"path", "sha256"} | null,
                      "scorer": MODEL | null, "scorer_id": DIGEST | null, "limit": N | null, "metrics": {field: {metric: value}},
                      "notes": [...], "samples": N, "created": ..., "run_config_hash": ..., ...}, ...]}

An evaluation is identified by its fields, its references (by content), its scorer (by its
whole config: `scorer_id`), its `--limit` and, for the pairwise arena, the other side it was
compared with (`compared_with`): evaluating the same again replaces that entry, anything else is
added, so comparing fields, reference sets or scorers over time never overwrites an earlier
figure. The file of earlier versions (one field → metric → value mapping) is read as one entry.

What each sample's figures rest on (facts found, matched and hallucinated, the arena's order and
verdict) is kept beside it, one file per entry, `OUT/_eval_details/ID.json` ({key: {field:
{family: ...}}}; the entry's `details` names it), so the history itself stays small.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from typing import Any

EVAL_FILE = "_eval.json"
DETAILS_DIR = "_eval_details"


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
    return (tuple(sorted(entry.get("fields") or [])), refs.get("sha256"), scorer, entry.get("limit"),
            entry.get("compared_with"))


def load(out_dir: str) -> list[dict[str, Any]]:
    data = _read_json(os.path.join(out_dir, EVAL_FILE))
    if isinstance(data, dict) and isinstance(data.get("evaluations"), list):
        return data["evaluations"]
    if isinstance(data, dict):  # the single-result file of earlier versions
        return [{"fields": sorted(data), "references": None, "scorer": None, "limit": None, "metrics": data,
                 "notes": ["written by an earlier capmill version: references and scorer not recorded"]}]
    return []


def _read_json(path: str) -> Any:
    """The JSON at `path` (local or on an object store), None when there is none."""
    if "://" in path:
        from capmill.writers.store import store_for

        try:
            return store_for(path).read_json(path)
        except FileNotFoundError:
            return None
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data: Any, indent: int | None = 2) -> None:
    """Written whole or not at all: renamed into place locally, one PUT on an object store."""
    if "://" in path:
        from capmill.writers.store import store_for

        text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
        store_for(path).write_bytes(path, text.encode("utf-8"))
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def details_name(entry: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entry_key(entry), default=str).encode()).hexdigest()[:16] + ".json"


def record(out_dir: str, entry: dict[str, Any], details: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Add `entry` (replacing one with the same identity) and write the file atomically; its
    per-sample `details`, when there are any, go to their own file first."""
    entry = {**entry, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    key = entry_key(entry)
    entry.pop("details", None)
    if details:
        if "://" not in out_dir:
            os.makedirs(os.path.join(out_dir, DETAILS_DIR), exist_ok=True)
        name = details_name(entry)
        _write_json(os.path.join(out_dir, DETAILS_DIR, name), details, indent=None)
        entry["details"] = name
    entries = [e for e in load(out_dir) if entry_key(e) != key] + [entry]
    _write_json(os.path.join(out_dir, EVAL_FILE), {"evaluations": entries})
    return entries


def load_details(out_dir: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The per-sample details of `entry` ({} when it has none or the file is gone)."""
    name = entry.get("details")
    if not isinstance(name, str) or os.sep in name or "/" in name:
        return {}
    try:
        data = _read_json(os.path.join(out_dir, DETAILS_DIR, name))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
