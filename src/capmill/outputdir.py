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
import uuid
from typing import Any

from capmill.errors import OutputAccessError, OutputConflictError

RUN_FILE = "_run.json"
STATS_DIR = "_stats"
REJECTS_DIR = "_rejects"
LOCK_FILE = "_lock.json"
# Cooperating runs (--cooperate): one member lease each, and one claim per shard in progress.
COOPERATORS_DIR = "_cooperators"
CLAIMS_DIR = "_claims"
# Entries capmill itself may create before `_run.json` exists (locks, claims, a stage's fit),
# which do not make a directory someone else's.
OWN_ENTRIES = frozenset({LOCK_FILE, "_fit", COOPERATORS_DIR, CLAIMS_DIR})


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


def create_json_once(path: str, content: Any) -> bool:
    """Create `path` holding `content` unless it exists (then False); readers never see it half
    written (a temporary hard-linked into place, which fails when the name is taken)."""
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.remove(tmp)
        except OSError:
            pass


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
    """An output directory: a local folder, or a prefix of an object store (`s3://bucket/prefix`,
    `gs://…`, through fsspec with `storage_options`); see capmill.writers.store."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        from capmill.writers.store import store_for

        self.path = path.rstrip("/") if "://" in path else path
        self.storage_options = dict(storage_options or {})
        self.store = store_for(self.path, self.storage_options)
        self.stats_dir = os.path.join(self.path, STATS_DIR)

    @property
    def local(self) -> bool:
        return self.store.local

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def makedirs(self, rel: str) -> None:
        self.store.makedirs(self.join(rel))

    def open(self, rel: str, mode: str = "rb"):
        """A file of the output, by its path relative to the output."""
        return self.store.open(self.join(rel), mode)

    def remove_temporaries(self, shard: str | None = None) -> int:
        """Delete what killed writers left half-written: everything (only a run holding the
        output alone may), or one shard's (a run that took over the shard's claim)."""
        return self.store.remove_temporaries(self.path, shard)

    def record_of(self, shard: str) -> dict[str, Any] | None:
        """The shard's commit record, or None."""
        try:
            return self.stats_of(shard)
        except FileNotFoundError:
            return None

    @property
    def run_file(self) -> str:
        return os.path.join(self.path, RUN_FILE)

    def read_run(self) -> dict[str, Any] | None:
        try:
            return self.store.read_json(self.run_file)
        except FileNotFoundError:
            return None

    def check(self, record: dict[str, Any], force: bool = False) -> str:
        """Would `prepare` accept this directory? Raises OutputConflictError as it would; returns
        what it would do ("new", "resume" or "discard"). Writes nothing."""
        store = self.store
        if not store.exists(self.path):
            return "new"
        if not store.isdir(self.path):
            raise OutputConflictError(f"output path {self.path!r} exists and is not a directory")
        previous = self.read_run()
        names = store.listdir(self.path) if previous is None else []
        if RUN_FILE in names:  # written meanwhile, by a cooperating run claiming the output
            previous = self.read_run()
        if previous is None:
            visible = [n for n in names if not n.startswith(".") and n not in OWN_ENTRIES]
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

    def prepare(self, record: dict[str, Any], force: bool = False, cooperate: bool = False) -> None:
        """Claim the directory for a run with `record` (holding `config_hash`), or refuse; the
        caller holds the directory's lock.

        Same hash: resume. Different hash: refuse, or with `force` delete the previous run's
        outputs (only the files its stats name) and start over. A non-empty directory that is
        not a capmill output is never touched.

        `cooperate`: other runs may be writing. `_run.json` is written once, by the first run
        (an exclusive create); the others check that its config hash is theirs. Temporaries are
        left alone (a run removes only those of shards whose claim it took over from a dead run).
        """
        try:
            if cooperate:
                self._join(record)
            else:
                self._prepare(record, force)
        except OSError as e:
            raise access_error(self.path, e) from None

    def _join(self, record: dict[str, Any]) -> None:
        # `_run.json` before anything else: a run starting meanwhile sees a capmill output, never
        # a folder of unknown entries.
        self.store.makedirs(self.path)
        if self.read_run() is not None or not self._create_once(self.run_file, record):
            self.check(record)  # another run's _run.json: the same config, or a refusal
        self.store.makedirs(self.stats_dir)

    def _create_once(self, path: str, content: Any) -> bool:
        if self.local:
            return create_json_once(path, content)
        return self.store.create(path, _json_bytes(content)) is not None

    def _prepare(self, record: dict[str, Any], force: bool) -> None:
        self.store.makedirs(self.path)
        previous = self.read_run()
        if self.check(record, force) == "discard":
            self.discard()
        elif previous is not None:
            record = {**record, "created": previous.get("created", record.get("created")),
                      "resumed": [*previous.get("resumed", []), _now()]}
        self.remove_temporaries()
        self.store.makedirs(self.stats_dir)
        self.write_json(self.run_file, record)

    def write_json(self, path: str, content: Any) -> None:
        """Written whole or not at all: an atomic rename here, one PUT on an object store."""
        if self.local:
            write_json_atomic(path, content)
        else:
            self.store.write_bytes(path, _json_bytes(content))

    def discard(self) -> None:
        """Delete the outputs that committed shards name, their stats, rejects and the run file."""
        for stats in self.all_stats():
            for rel in stats.get("outputs", []):
                self.store.remove(os.path.join(self.path, rel.rstrip("/")))
        for name in (STATS_DIR, REJECTS_DIR):
            self.store.remove(os.path.join(self.path, name))
        self.store.remove(self.run_file)

    def committed(self) -> set[str]:
        """Shards with a commit record (complete, or partial under a --limit)."""
        return {n[:-5] for n in self.store.listdir(self.stats_dir) if n.endswith(".json") and not n.startswith(".")}

    def stats_of(self, shard: str) -> dict[str, Any]:
        return self.store.read_json(os.path.join(self.stats_dir, f"{shard}.json"))

    def records(self) -> dict[str, dict[str, Any]]:
        """shard → its commit record."""
        return {stats["shard"]: stats for stats in self.all_stats()}

    def commit(self, shard: str, stats: dict[str, Any]) -> None:
        self.write_json(os.path.join(self.stats_dir, f"{shard}.json"), stats)

    def all_stats(self) -> list[dict[str, Any]]:
        out = []
        for shard in sorted(self.committed()):
            try:
                out.append(self.stats_of(shard))
            except FileNotFoundError:  # removed meanwhile (a --force run of another process)
                continue
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

                with self.open(f"{shard}.parquet") as f:
                    for key in pq.read_table(f, columns=["key"]).column("key").to_pylist():
                        keys[key] = shard
            elif f"{shard}.tar" in outputs:
                with self.open(f"{shard}.tar") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                    for info in tar:
                        keys[split_member(info.name)[0]] = shard
        return keys


def _json_bytes(content: Any) -> bytes:
    return json.dumps(content, indent=2, ensure_ascii=False, sort_keys=True).encode("utf-8")


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
