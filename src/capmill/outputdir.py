"""The output directory's commit protocol and run record.

    OUT/NNNNN.tar, OUT/NNNNN.parquet, ...   written under temporary names, renamed when complete
    OUT/_stats/NNNNN.json                    written last: the shard's commit record
    OUT/_run.json                            the config, its hash, capmill and model versions

A shard is done exactly when its stats file exists. A killed run leaves at worst temporaries
(removed on the next start) and renamed outputs without a stats file (overwritten when the
shard is redone), so a rerun produces the same files as an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from typing import Any

from capmill.errors import OutputConflictError
from capmill.writers.base import remove_temporaries

RUN_FILE = "_run.json"
STATS_DIR = "_stats"
REJECTS_DIR = "_rejects"


def config_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_json_atomic(path: str, content: Any) -> None:
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OutputDir:
    def __init__(self, path: str):
        self.path = path
        self.stats_dir = os.path.join(path, STATS_DIR)

    @property
    def run_file(self) -> str:
        return os.path.join(self.path, RUN_FILE)

    def read_run(self) -> dict[str, Any] | None:
        if not os.path.exists(self.run_file):
            return None
        with open(self.run_file, encoding="utf-8") as f:
            return json.load(f)

    def prepare(self, record: dict[str, Any], force: bool = False) -> None:
        """Claim the directory for a run with `record` (holding `config_hash`), or refuse.

        Same hash: resume. Different hash: refuse, or with `force` delete the previous run's
        outputs (only the files its stats name) and start over. A non-empty directory that is
        not a capmill output is never touched.
        """
        os.makedirs(self.path, exist_ok=True)
        previous = self.read_run()
        if previous is None:
            visible = [n for n in os.listdir(self.path) if not n.startswith(".")]
            if visible:
                raise OutputConflictError(
                    f"output directory {self.path!r} is not empty and holds no {RUN_FILE}: it is not a "
                    f"capmill output. Choose a new or empty directory."
                )
        elif previous.get("config_hash") != record["config_hash"]:
            if not force:
                raise OutputConflictError(
                    f"output directory {self.path!r} holds results of a different config "
                    f"(hash {previous.get('config_hash')}, this run {record['config_hash']}). "
                    f"Use a new output path, or pass --force to discard those results and start over."
                )
            self.discard()
        else:
            record = {**record, "created": previous.get("created", record.get("created")),
                      "resumed": [*previous.get("resumed", []), _now()]}
        remove_temporaries(self.path)
        os.makedirs(self.stats_dir, exist_ok=True)
        write_json_atomic(self.run_file, record)

    def discard(self) -> None:
        """Delete the outputs that committed shards name, their stats, rejects and the run file."""
        for stats in self.all_stats():
            for rel in stats.get("outputs", []):
                target = os.path.join(self.path, rel)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
        for name in (STATS_DIR, REJECTS_DIR):
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        if os.path.exists(self.run_file):
            os.remove(self.run_file)

    def committed(self) -> set[str]:
        if not os.path.isdir(self.stats_dir):
            return set()
        return {n[:-5] for n in os.listdir(self.stats_dir) if n.endswith(".json") and not n.startswith(".")}

    def commit(self, shard: str, stats: dict[str, Any]) -> None:
        write_json_atomic(os.path.join(self.stats_dir, f"{shard}.json"), stats)

    def all_stats(self) -> list[dict[str, Any]]:
        out = []
        for shard in sorted(self.committed()):
            with open(os.path.join(self.stats_dir, f"{shard}.json"), encoding="utf-8") as f:
                out.append(json.load(f))
        return out

    def committed_keys(self) -> dict[str, str]:
        """key → shard for every committed shard, read from its parquet or tar output."""
        import tarfile

        from capmill.readers.webdataset import split_member

        keys: dict[str, str] = {}
        for stats in self.all_stats():
            shard = stats["shard"]
            outputs = stats.get("outputs", [])
            if f"{shard}.parquet" in outputs:
                import pyarrow.parquet as pq

                for key in pq.read_table(os.path.join(self.path, f"{shard}.parquet"), columns=["key"]).column("key").to_pylist():
                    keys[key] = shard
            elif f"{shard}.tar" in outputs:
                with tarfile.open(os.path.join(self.path, f"{shard}.tar")) as tar:
                    for name in tar.getnames():
                        keys[split_member(name)[0]] = shard
        return keys


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_record(config_content: dict[str, Any], hashed: dict[str, Any], models: dict[str, list[str]]) -> dict[str, Any]:
    from capmill import __version__

    return {
        "config": config_content,
        "config_hash": config_hash(hashed),
        "capmill_version": __version__,
        "models": models,
        "created": _now(),
    }
