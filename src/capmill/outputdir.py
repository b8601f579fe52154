"""The output directory's commit protocol and run record.

    OUT/NNNNN.tar, OUT/NNNNN.parquet, ...   written under temporary names, renamed when complete
    OUT/_stats/NNNNN.json                    written last: the shard's commit record
    OUT/_run.json                            the config, its hash, capmill and model versions
    OUT/_lock.json                           the lock of the run writing it (capmill.commit.lock)

A shard is done exactly when its stats file exists (and does not say `partial`). A killed run
leaves at worst temporaries (removed by the next run once it holds the lock) and renamed outputs
without a stats file (overwritten when the shard is redone), so a rerun produces the same files
as an uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from typing import Any

from capmill.errors import OutputAccessError, OutputConflictError
from capmill.writers.base import remove_temporaries

RUN_FILE = "_run.json"
STATS_DIR = "_stats"
REJECTS_DIR = "_rejects"
LOCK_FILE = "_lock.json"
# Entries capmill itself may create before `_run.json` exists (a lock, a stage's fit), which do
# not make a directory someone else's.
OWN_ENTRIES = frozenset({LOCK_FILE, "_fit"})


def config_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_json_atomic(path: str, content: Any) -> None:
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A full disk fails the write or the flush: leave no temporary behind.
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def writable_problem(path: str) -> str | None:
    """Why `path` (or the folder it would be created in) cannot be written, or None. A look
    only (a dry run writes nothing); the run itself reports what the file system says."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe!r} is not a directory"
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe!r} is on a read-only file system"
    except (AttributeError, OSError):
        pass
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe!r} is not writable by this user"
    return None


def access_error(path: str, error: OSError) -> OutputAccessError:
    return OutputAccessError(f"cannot write to output directory {path!r}: {error.strerror or error} "
                             f"({getattr(error, 'filename', None) or path}); choose a writable output.path")


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

    def check(self, record: dict[str, Any], force: bool = False) -> str:
        """Would `prepare` accept this directory? Raises OutputConflictError as it would; returns
        what it would do ("new", "resume" or "discard"). Writes nothing."""
        if not os.path.exists(self.path):
            return "new"
        if not os.path.isdir(self.path):
            raise OutputConflictError(f"output path {self.path!r} exists and is not a directory")
        previous = self.read_run()
        if previous is None:
            visible = [n for n in os.listdir(self.path) if not n.startswith(".") and n not in OWN_ENTRIES]
            if visible:
                raise OutputConflictError(
                    f"output directory {self.path!r} is not empty and holds no {RUN_FILE}: it is not a "
                    f"capmill output. Choose a new or empty directory."
                )
            return "new"
        if previous.get("config_hash") != record["config_hash"]:
            if not force:
                raise OutputConflictError(
                    f"output directory {self.path!r} holds results of a different config "
                    f"(hash {previous.get('config_hash')}, this run {record['config_hash']}). "
                    f"Use a new output path, or pass --force to discard those results and start over."
                )
            return "discard"
        return "resume"

    def prepare(self, record: dict[str, Any], force: bool = False) -> None:
        """Claim the directory for a run with `record` (holding `config_hash`), or refuse; the
        caller holds the directory's lock.

        Same hash: resume. Different hash: refuse, or with `force` delete the previous run's
        outputs (only the files its stats name) and start over. A non-empty directory that is
        not a capmill output is never touched.
        """
        try:
            self._prepare(record, force)
        except OSError as e:
            raise access_error(self.path, e) from None

    def _prepare(self, record: dict[str, Any], force: bool) -> None:
        os.makedirs(self.path, exist_ok=True)
        previous = self.read_run()
        if self.check(record, force) == "discard":
            self.discard()
        elif previous is not None:
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
        """Shards with a commit record (complete, or partial under a --limit)."""
        if not os.path.isdir(self.stats_dir):
            return set()
        return {n[:-5] for n in os.listdir(self.stats_dir) if n.endswith(".json") and not n.startswith(".")}

    def stats_of(self, shard: str) -> dict[str, Any]:
        with open(os.path.join(self.stats_dir, f"{shard}.json"), encoding="utf-8") as f:
            return json.load(f)

    def records(self) -> dict[str, dict[str, Any]]:
        """shard → its commit record."""
        return {stats["shard"]: stats for stats in self.all_stats()}

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
