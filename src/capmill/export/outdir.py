"""An export folder on the output directory's commit protocol.

    DIR/_export.json        the claim: target, config, source run, and their hash (written first,
                            rewritten with the totals at the end)
    DIR/00000.tar, ...      each shard's files, written under temporary names, renamed on commit
    DIR/_stats/00000.json   the shard's commit record, written last (outputs, counts)

A shard is exported exactly when its commit record exists: a killed export rerun with the same
settings skips committed shards and redoes the rest (temporaries are removed first), so it ends
with the files of an uninterrupted export. A folder holding another export (another target,
mix, seed or source run) is refused unless `--force`, which deletes that export's files (only
those its records name); a non-empty folder that is not an export is never touched.

The commit records are written and read through `OutputDir` (`commit`, `committed`,
`all_stats`, `discard`), the run output's own protocol, so exports follow wherever that
protocol goes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from capmill.errors import OutputConflictError
from capmill.outputdir import OutputDir, write_json_atomic
from capmill.writers.base import remove_temporaries

EXPORT_FILE = "_export.json"


class ExportDir:
    def __init__(self, path: str):
        self.path = path
        self.records = OutputDir(path)

    @property
    def claim_file(self) -> str:
        return os.path.join(self.path, EXPORT_FILE)

    def read_claim(self) -> dict[str, Any] | None:
        if not os.path.exists(self.claim_file):
            return None
        with open(self.claim_file, encoding="utf-8") as f:
            return json.load(f)

    def claim(self, record: dict[str, Any], force: bool = False) -> None:
        """Own the folder for the export `record` (holding `export_hash`), resume it, or refuse."""
        os.makedirs(self.path, exist_ok=True)
        previous = self.read_claim()
        if previous is None:
            visible = [n for n in os.listdir(self.path) if not n.startswith(".")]
            if visible:
                what = "a capmill run output" if OutputDir(self.path).read_run() is not None else "not a capmill export"
                raise OutputConflictError(f"export folder {self.path!r} is not empty and holds no {EXPORT_FILE}: it is "
                                          f"{what}. Choose a new or empty folder.")
        elif previous.get("export_hash") != record["export_hash"]:
            if not force:
                raise OutputConflictError(
                    f"export folder {self.path!r} holds another export ({describe(previous)}); this one is "
                    f"{describe(record)}. One folder holds one export: choose another --out, or pass --force to "
                    f"delete that export and write this one.")
            self.discard(previous)
        else:
            record = {**record, "created": previous.get("created", record.get("created"))}
        remove_temporaries(self.path)
        os.makedirs(self.records.stats_dir, exist_ok=True)
        write_json_atomic(self.claim_file, record)

    def committed(self) -> set[str]:
        return self.records.committed()

    def commit(self, shard: str, stats: dict[str, Any]) -> None:
        self.records.commit(shard, stats)

    def all_stats(self) -> list[dict[str, Any]]:
        return self.records.all_stats()

    def discard(self, previous: dict[str, Any]) -> None:
        """Delete what the previous export wrote: its shards' outputs and records, its files
        outside shards (`files` of its claim), and the claim."""
        self.records.discard()
        for rel in previous.get("files_outside_shards", []):
            target = os.path.join(self.path, rel)
            if os.path.isfile(target):
                os.remove(target)
        os.remove(self.claim_file)

    def finish(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.claim_file, record)


def describe(record: dict[str, Any]) -> str:
    config = record.get("config", {})
    return (f"target {config.get('target')!r}, seed {config.get('seed')}, mix {json.dumps(config.get('mix'))}, "
            f"from {record.get('source')}")
